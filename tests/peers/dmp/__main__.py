"""``python -m tests.peers.dmp --port P --cert C --key K --client-ca CA``: run the simulator."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from .server import DmpSimulator


async def _main(args: argparse.Namespace) -> None:
    sim = DmpSimulator(cert=args.cert, key=args.key, client_ca=args.client_ca,
                       trust_anchors=args.trust or None, host=args.host, port=args.port)
    for pid in args.patient:
        sim.add_patient(pid)
    await sim.start()
    print(json.dumps({"url": sim.url, "port": sim.port}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.peers.dmp", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    p.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    p.add_argument("--client-ca", type=Path, required=True,
                   help="CA that issues accepted TLS client certificates")
    p.add_argument("--trust", type=Path, action="append", default=[],
                   help="anchors for VIHF/XAdES signing certificates (default: --client-ca)")
    p.add_argument("--patient", action="append", default=[],
                   help="register a patient record: 'INS^^^&OID&ISO^NH' (repeatable)")
    try:
        asyncio.run(_main(p.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
