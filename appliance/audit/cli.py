"""``drimbox audit export``: the access audit trail as CSV, for the security officer."""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
from pathlib import Path
from typing import Any

from . import export_csv


def _when(text: str) -> float:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or date-time "
                                         "(2026-12-01 or 2026-12-01T08:00:00+01:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def cmd_export(args: argparse.Namespace) -> int:
    from appliance.cli import _load

    cfg = _load(args.config)
    if not cfg.state_db.exists():
        print(f"drimbox audit: {cfg.state_db} does not exist (the box never ran)",
              file=sys.stderr)
        return 2
    # Read-only: the export never writes, and runs beside the daemon (WAL).
    conn = sqlite3.connect(f"file:{cfg.state_db}?mode=ro", uri=True)
    try:
        if args.out is None:
            n = export_csv(conn, sys.stdout, args.since, args.until)
        else:
            with open(args.out, "w", newline="", encoding="utf-8") as f:
                n = export_csv(conn, f, args.since, args.until)
    finally:
        conn.close()
    print(f"{n} audit events", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    from appliance.cli import _add_config_arg

    audit = sub.add_parser("audit", help="the access audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    ex = audit_sub.add_parser("export", help="write audit events as CSV")
    _add_config_arg(ex)
    ex.add_argument("--since", type=_when, required=True, help="ISO 8601 date or date-time")
    ex.add_argument("--until", type=_when, help="ISO 8601 date or date-time (excluded)")
    ex.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    ex.set_defaults(func=cmd_export)
