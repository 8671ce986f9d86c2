"""A durable job queue in SQLite, worked by one asyncio task.

Rules: a job is written in the same transaction as its cause; it is picked when due and when no
older unfinished job of the same study exists (order per study); the handler returns what happens
next. A crash between two steps leaves the job in its last committed state, and it runs again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from appliance.component import Health
from appliance.logs import correlation_id
from appliance.store import Database

log = logging.getLogger(__name__)

# States in which a job still has work to do; every other state is final.
ACTIVE = ("received", "resolved", "built")
FINAL = ("published", "quarantined", "failed", "superseded", "withdrawn", "discarded", "done")


@dataclass
class Job:
    id: int
    kind: str
    study_uid: str
    state: str
    payload: dict[str, Any]
    reason: str
    attempts: int
    next_at: float
    deadline_at: float | None
    created_at: float
    correlation: str

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> "Job":
        return cls(r["id"], r["kind"], r["study_uid"], r["state"], json.loads(r["payload"]),
                   r["reason"], r["attempts"], r["next_at"], r["deadline_at"], r["created_at"],
                   r["correlation"])


@dataclass
class Step:
    """What a handler says happened: the job's new state, and when to look again if active."""

    state: str
    reason: str = ""
    retry_in: float | None = None     # seconds; for an active state, when to run again
    payload: dict[str, Any] | None = None  # replaces the payload when given
    count_attempt: bool = False


Handler = Callable[[Job], Awaitable[Step]]


def enqueue(conn: sqlite3.Connection, kind: str, study_uid: str, payload: dict[str, Any],
            deadline_at: float | None = None, state: str = "received") -> int:
    """Add a job inside the caller's open transaction (the same one as its cause)."""
    now = time.time()
    cur = conn.execute(
        "INSERT INTO jobs(kind, study_uid, state, payload, next_at, deadline_at, created_at, "
        "updated_at, correlation) VALUES (?,?,?,?,?,?,?,?,?)",
        (kind, study_uid, state, json.dumps(payload), now, deadline_at, now, now,
         correlation_id.get()))
    return int(cur.lastrowid)


class Outbox:
    """Component: works due jobs one at a time, in order per study."""

    name = "outbox"

    def __init__(self, db: Database, handlers: dict[str, Handler],
                 max_backoff: float = 600.0) -> None:
        self.db = db
        self.handlers = handlers
        self.max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: int | None = None
        self.last_error: str = ""

    def wake(self) -> None:
        """Call (on the loop) after enqueuing, so the job starts now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def health(self) -> Health:
        running = self._task is not None and not self._task.done()
        counts = {r["state"]: r["n"] for r in self.db.query(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE state NOT IN ('done','discarded',"
            "'published','withdrawn','superseded') GROUP BY state")}
        return Health(running, "ok" if running else "stopped", {"jobs": counts})

    def next_due(self, now: float) -> Job | None:
        marks = ",".join("?" * len(ACTIVE))
        row = self.db.query_one(
            f"""SELECT * FROM jobs j WHERE j.state IN ({marks}) AND j.next_at <= ?
                AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.study_uid = j.study_uid
                                AND o.id < j.id AND o.state IN ({marks}))
                ORDER BY j.next_at, j.id LIMIT 1""", (*ACTIVE, now, *ACTIVE))
        return Job.from_row(row) if row else None

    def _sleep_for(self, now: float) -> float:
        marks = ",".join("?" * len(ACTIVE))
        row = self.db.query_one(f"SELECT MIN(next_at) AS t FROM jobs WHERE state IN ({marks})",
                                ACTIVE)
        if row is None or row["t"] is None:
            return 30.0
        return max(0.0, min(30.0, row["t"] - now))

    async def run_once(self, now: float | None = None) -> Job | None:
        """Work the next due job, if any; returns it (for tests and the loop)."""
        job = self.next_due(time.time() if now is None else now)
        if job is None:
            return None
        self._current = job.id
        correlation_id.set(job.correlation or f"job{job.id}")
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                step = Step("failed", f"no handler for job kind {job.kind!r}")
            else:
                step = await handler(job)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a handler must not stop the queue
            log.exception("job handler crashed", extra={"job": job.id, "kind": job.kind})
            step = Step(job.state, f"internal error: {type(e).__name__}", count_attempt=True,
                        retry_in=None)
        finally:
            self._current = None
        self._apply(job, step)
        return job

    def _apply(self, job: Job, step: Step) -> None:
        now = time.time()
        attempts = job.attempts + (1 if step.count_attempt else 0)
        retry_in = step.retry_in
        if step.state in ACTIVE and retry_in is None:
            retry_in = 0.0 if not step.count_attempt else min(self.max_backoff, 2.0 ** attempts)
        next_at = now + (retry_in or 0.0)
        payload = json.dumps(step.payload) if step.payload is not None else None
        with self.db.transaction() as c:
            c.execute(
                "UPDATE jobs SET state=?, reason=?, attempts=?, next_at=?, updated_at=?, "
                "payload=COALESCE(?, payload) WHERE id=?",
                (step.state, step.reason, attempts, next_at, now, payload, job.id))
        if step.state != job.state or step.reason:
            log.info("job step", extra={"job": job.id, "kind": job.kind, "from": job.state,
                                        "to": step.state, "reason": step.reason[:200]})

    async def _loop(self) -> None:
        while True:
            try:
                job = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # database trouble: keep trying, visibly
                self.last_error = str(e)
                log.exception("outbox loop error")
                job = None
                await asyncio.sleep(1.0)
            if job is not None:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_for(time.time()))
            except asyncio.TimeoutError:
                pass

    # -- admin actions -------------------------------------------------------------------------
    def retry(self, job_id: int) -> bool:
        """Put a quarantined or failed job back to work from its first step."""
        n = self.db.execute(
            "UPDATE jobs SET state='received', reason='retry requested', next_at=?, attempts=0, "
            "updated_at=? WHERE id=? AND state IN ('quarantined','failed')",
            (time.time(), time.time(), job_id))
        if n:
            self.wake()
        return bool(n)

    def discard(self, job_id: int) -> bool:
        n = self.db.execute(
            "UPDATE jobs SET state='discarded', reason='discarded by an administrator', "
            "updated_at=? WHERE id=? AND state NOT IN ('published','done','discarded')",
            (time.time(), job_id))
        return bool(n)
