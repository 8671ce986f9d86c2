"""Viewer sessions of professionals logged in on this box.

The consumer's Pro Santé Connect login creates a session and grants it the exams the
professional opened; the DICOMweb guard reads a session's grants. The browser holds a random id
in an ``HttpOnly; Secure; SameSite=Strict`` cookie; the database keeps only its SHA-256, so a
copy of ``state.db`` opens no session. Blocking (SQLite): call from an executor.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from appliance.store.db import Database

COOKIE = "drimbox_session"
DEFAULT_TTL = 8 * 3600.0


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    professional: str            # RPPS-based id
    structure: str
    studies: frozenset[str]      # the exams this session may read
    expires_at: float
    display: dict[str, Any]


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db   # or the store's db_lazy: the box wires this before the store opens


    def create(self, professional: str, *, structure: str = "", ttl: float = DEFAULT_TTL,
               display: dict[str, Any] | None = None, studies: frozenset[str] = frozenset(),
               now: float | None = None) -> str:
        """A new session; returns its id (the cookie value), never stored in clear."""
        if not professional:
            raise ValueError("a session belongs to a professional")
        session_id = secrets.token_urlsafe(32)
        now = time.time() if now is None else now
        self.purge_expired(now)     # the table holds live sessions only (indexed on expiry)
        self.db.execute(
            "INSERT INTO sessions(id_hash, professional, structure, display, studies, created_at,"
            " expires_at) VALUES (?,?,?,?,?,?,?)",
            (_hash(session_id), professional, structure, json.dumps(display or {}),
             json.dumps(sorted(studies)), now, now + ttl))
        return session_id

    def get(self, session_id: str, now: float | None = None) -> Session | None:
        """The live session of that id, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 128:
            return None
        row = self.db.query_one("SELECT * FROM sessions WHERE id_hash=?", (_hash(session_id),))
        if row is None or row["expires_at"] <= (time.time() if now is None else now):
            return None
        return Session(row["professional"], row["structure"],
                       frozenset(json.loads(row["studies"])), row["expires_at"],
                       json.loads(row["display"]))

    def grant(self, session_id: str, study_uid: str) -> None:
        """Let the session read one more exam (the one the professional chose)."""
        with self.db.transaction() as c:
            row = c.execute("SELECT studies FROM sessions WHERE id_hash=?",
                            (_hash(session_id),)).fetchone()
            if row is None:
                raise KeyError("no such session")
            studies = sorted(set(json.loads(row["studies"])) | {study_uid})
            c.execute("UPDATE sessions SET studies=? WHERE id_hash=?",
                      (json.dumps(studies), _hash(session_id)))

    def end(self, session_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id_hash=?", (_hash(session_id),))

    def purge_expired(self, now: float | None = None) -> int:
        return self.db.execute("DELETE FROM sessions WHERE expires_at <= ?",
                               (time.time() if now is None else now,))
