"""Access audit trail: who touched which patient's data, when, through which interface.

Rows go to the ``audit_events`` table (migration 0002). The audit trail is the one place where a
patient identifier may be written; logs never carry one.

Two ways to write:

- :func:`record` commits one event now (blocking; from a thread or an executor).
- :class:`AuditWriter` queues events on the event loop and commits them in batches, one
  transaction (one fsync) per flush interval. A busy HTTP server would otherwise pay one fsync
  per request (about 4 ms here, more than serving a 0.5 MB instance). It fails closed: once a
  flush fails, or the backlog is full, :meth:`AuditWriter.record` raises
  :class:`AuditUnavailable` until a retry succeeds, so callers refuse to serve data. The cost is
  that a crash may lose the events of the last interval (0.1 s by default).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import logging
import sqlite3
import time
from dataclasses import astuple, dataclass
from typing import IO, Callable

from appliance.logs import correlation_id
from appliance.store.db import Database

__all__ = ["AuditUnavailable", "AuditWriter", "Event", "Who", "export_csv", "record"]

log = logging.getLogger(__name__)

_INSERT = ("INSERT INTO audit_events(ts, actor, action, interface, patient_id, study_uid, outcome,"
           " detail, correlation, peer_dn, structure, professional, series_uid, bytes, status,"
           " reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
#: The columns of an export, in order (``drimbox audit export``).
COLUMNS = ("id", "ts", "actor", "action", "interface", "outcome", "status", "reason", "peer_dn",
           "structure", "professional", "patient_id", "study_uid", "series_uid", "bytes",
           "detail", "correlation")


class AuditUnavailable(RuntimeError):
    """The audit trail cannot take events now; patient data must not be served."""


@dataclass(frozen=True)
class Event:
    ts: float
    actor: str           # AE title, certificate subject, professional id, peer address
    action: str          # e.g. dicom.store, dicomweb.retrieve, dicomweb.search
    interface: str       # dicom, http, hl7, dmp
    patient_id: str = ""
    study_uid: str = ""
    outcome: str = "ok"  # ok (served), refused, error
    detail: str = ""
    correlation: str = ""
    peer_dn: str = ""        # the client certificate's subject (peer boxes)
    structure: str = ""      # the peer's structure (whitelist domain) or the session's
    professional: str = ""   # RPPS-based id of the professional (PSC token or session)
    series_uid: str = ""
    bytes: int = 0           # bytes of patient data the answer carries
    status: int = 0          # HTTP status answered
    reason: str = ""         # why it was refused


@dataclass(frozen=True)
class Who:
    """The party behind a request, as the access guard established it."""

    actor: str
    peer_dn: str = ""
    structure: str = ""
    professional: str = ""


def write_events(db: Database, events: list[Event]) -> None:
    """Commit events in one transaction (blocking)."""
    with db.transaction() as c:
        c.executemany(_INSERT, [astuple(e) for e in events])


def record(db: Database, actor: str, action: str, interface: str, *, patient_id: str = "",
           study_uid: str = "", outcome: str = "ok", detail: str = "",
           correlation: str | None = None) -> None:
    """Append one audit event and commit it. Blocking: call from a thread or an executor.

    ``correlation`` defaults to the current correlation id; pass it explicitly from executor
    threads, which do not inherit the caller's context.
    """
    write_events(db, [Event(time.time(), actor, action, interface, patient_id, study_uid,
                            outcome, detail,
                            correlation_id.get() if correlation is None else correlation)])


class AuditWriter:
    """Batched, fail-closed audit writer for code on the event loop (see the module doc)."""

    def __init__(self, db: Database | Callable[[], Database], *, flush_interval: float = 0.1,
                 max_pending: int = 10_000, retry_interval: float = 1.0) -> None:
        # A callable is resolved at each flush: the box builds its apps before the store opens.
        self._db = db
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.retry_interval = retry_interval
        self._pending: list[Event] = []
        self._failure: BaseException | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> Database:
        return self._db if isinstance(self._db, Database) else self._db()

    @property
    def healthy(self) -> bool:
        return self._failure is None and len(self._pending) < self.max_pending

    def record(self, actor: str | Who, action: str, interface: str, *, patient_id: str = "",
               study_uid: str = "", outcome: str = "ok", detail: str = "",
               series_uid: str = "", bytes: int = 0, status: int = 0,
               reason: str = "") -> None:
        """Queue one event (non-blocking; on the loop). Raises AuditUnavailable."""
        if self._failure is not None:
            raise AuditUnavailable(f"audit trail write failed: {self._failure}")
        if len(self._pending) >= self.max_pending:
            raise AuditUnavailable("audit backlog full")
        who = actor if isinstance(actor, Who) else Who(actor)
        self._pending.append(Event(time.time(), who.actor, action, interface, patient_id,
                                   study_uid, outcome, detail, correlation_id.get(),
                                   who.peer_dn, who.structure, who.professional, series_uid,
                                   bytes, status, reason))
        self._schedule(self.flush_interval)

    def _schedule(self, delay: float) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._flush_after(delay))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.flush()
        except AuditUnavailable:
            pass    # logged by flush(); the retry is scheduled below
        if self._pending:
            self._timer = None
            self._schedule(self.retry_interval if self._failure else self.flush_interval)

    async def flush(self) -> None:
        """Commit everything queued so far. Raises AuditUnavailable when the write fails."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                db = self.db
                await asyncio.get_running_loop().run_in_executor(None, write_events, db, batch)
            except Exception as e:
                self._pending = batch + self._pending      # keep them for the retry
                if self._failure is None:
                    log.error("audit trail write failed; refusing patient data until it "
                              "recovers", extra={"error": type(e).__name__})
                self._failure = e
                raise AuditUnavailable(f"audit trail write failed: {e}") from e
            if self._failure is not None:
                log.warning("audit trail writable again")
            self._failure = None

    async def aclose(self) -> None:
        """Flush what is queued and stop the timer."""
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        try:
            await self.flush()
        except AuditUnavailable:
            log.error("audit events lost at shutdown", extra={"count": len(self._pending)})


def export_csv(conn: sqlite3.Connection, out: IO[str], since: float,
               until: float | None = None) -> int:
    """Write the events from ``since`` (to ``until``) as CSV with a header; returns the count.

    ``conn`` may be read-only (``drimbox audit export`` opens ``state.db`` so, beside the
    running daemon). Times are ISO 8601 UTC. Patient identifiers are written: the export is
    for the security officer and leaves the box only by their hand.
    """
    w = csv.writer(out)
    w.writerow(COLUMNS)
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit_events WHERE ts >= ?"
    params: list[float] = [since]
    if until is not None:
        sql += " AND ts < ?"
        params.append(until)
    n = 0
    for row in conn.execute(sql + " ORDER BY id", params):
        values = list(row)
        values[1] = dt.datetime.fromtimestamp(values[1], dt.UTC).isoformat(
            timespec="milliseconds")
        w.writerow(values)
        n += 1
    return n
