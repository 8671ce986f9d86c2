"""Send HL7 files to an MLLP listener and print each ACK (demo and manual checks).

    python -m appliance.hl7 send 127.0.0.1 2575 report.hl7 [more.hl7 ...]

Line ends are normalised to CR. Exit status 0 only if every message got AA.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from appliance.hl7.ack import parse_ack
from appliance.hl7.messages import normalise
from appliance.hl7.mllp import MllpClient


async def _send(host: str, port: int, files: list[Path], timeout: float) -> int:
    failures = 0
    async with await MllpClient.connect(host, port, timeout) as client:
        for path in files:
            ack = await client.send(normalise(path.read_bytes().decode("utf-8")))
            code, control_id, errors = parse_ack(ack)
            detail = "; ".join(f"{c}: {r}" for c, r in errors)
            print(f"{path.name}: {code} {control_id} {detail}".rstrip())
            failures += code != "AA"
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.hl7")
    sub = ap.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="send HL7 files over MLLP, print the ACKs")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("files", nargs="+", type=Path)
    send.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    return asyncio.run(_send(args.host, args.port, args.files, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
