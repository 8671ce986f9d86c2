"""Access audit trail: who touched which patient's data, when, through which interface.

Rows go to the ``audit_events`` table (migration 0002). The audit trail is the one place where a
patient identifier may be written; logs never carry one.
"""

from __future__ import annotations

import time

from appliance.logs import correlation_id
from appliance.store.db import Database

__all__ = ["record"]


def record(db: Database, actor: str, action: str, interface: str, *, patient_id: str = "",
           study_uid: str = "", outcome: str = "ok", detail: str = "", correlation: str | None = None) -> None:
    """Append one audit event (autocommitted). Blocking: call from an executor on the loop.

    ``correlation`` defaults to the current correlation id; pass it explicitly from executor
    threads, which do not inherit the caller's context.
    """
    db.execute(
        "INSERT INTO audit_events(ts, actor, action, interface, patient_id, study_uid, outcome,"
        " detail, correlation) VALUES (?,?,?,?,?,?,?,?,?)",
        (time.time(), actor, action, interface, patient_id, study_uid, outcome, detail,
         correlation_id.get() if correlation is None else correlation))
