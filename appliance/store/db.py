"""SQLite in WAL mode with numbered migrations.

Migrations are the files ``migrations/NNNN_name.sql``, applied in order inside one transaction each;
``PRAGMA user_version`` records the last applied number. A database newer than this code refuses
to open rather than guessing.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator


class SchemaError(RuntimeError):
    """The database cannot be used by this version of the box."""


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every packaged migration, in order."""
    out = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort()
    numbers = [n for n, _, _ in out]
    if numbers != list(range(1, len(numbers) + 1)):
        raise SchemaError(f"migrations are not numbered 1..N without gaps: {numbers}")
    return out


class Database:
    """One SQLite connection shared by the daemon's threads, serialised by a lock.

    Short statements only: the lock is held for the duration of one statement or transaction.
    """

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self, target: int | None = None) -> int:
        """Apply pending migrations up to ``target`` (default: all). Returns the new version."""
        known = migrations()
        latest = known[-1][0] if known else 0
        target = latest if target is None else target
        with self._lock:
            current = self.version
            if current > latest:
                raise SchemaError(f"{self.path}: schema version {current} is newer than this "
                                  f"software (knows up to {latest}); refusing to open")
            for number, name, sql in known:
                if current < number <= target:
                    try:
                        self._conn.execute("BEGIN IMMEDIATE")
                        for stmt in _split_sql(sql):
                            self._conn.execute(stmt)
                        self._conn.execute(f"PRAGMA user_version={number}")
                        self._conn.execute("COMMIT")
                    except Exception as e:
                        self._conn.execute("ROLLBACK")
                        raise SchemaError(f"migration {number:04d}_{name} failed: {e}") from e
            return self.version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) under the lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Any = ()) -> int:
        """One autocommitted statement; returns the number of rows changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    # sqlite3.executescript() commits implicitly, which would break one-transaction migrations.
    # Statements are cut where SQLite itself says one is complete, so a trigger's BEGIN ... END
    # body (which holds ';') stays whole.
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    statements, buf = [], ""
    for piece in "\n".join(lines).split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                statements.append(buf.strip())
            buf = ""
    if buf.strip(" \n;"):
        raise SchemaError(f"incomplete SQL statement in a migration: {buf.strip()[:80]!r}")
    return statements
