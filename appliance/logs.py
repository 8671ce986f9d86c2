"""Structured logging: JSON lines on stderr (or journald), a correlation id on every record.

Never log a patient name, an INS, an IPP, a token or a PIN. Log opaque identifiers instead (study
UID hashes, job ids, message control ids) and keep patient-level facts in the audit trail.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="-")


def new_correlation_id(prefix: str = "") -> str:
    """Start a new correlation id for the current task (HL7 message, HTTP request, job)."""
    cid = prefix + uuid.uuid4().hex[:16]
    correlation_id.set(cid)
    return cid


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields passed with ``extra={...}`` are kept."""

    _std = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "correlation_id"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "cid": getattr(record, "correlation_id", "-"),
        }
        for k, v in vars(record).items():
            if k not in self._std and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once for the daemon or a CLI command."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    use_journal = fmt == "journald" or (fmt == "auto" and os.environ.get("JOURNAL_STREAM"))
    if use_journal:
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER="drimbox")
            handler.setFormatter(logging.Formatter("%(message)s [cid=%(correlation_id)s]"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom is chatty at INFO (one line per PDU event); keep its warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
