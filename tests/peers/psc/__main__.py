"""``python -m tests.peers.psc --port P --cert C --key K --ca CA [--config FILE]``: run the
Pro Santé Connect simulator; prints ``{"url", "port", "issuer", "discovery_url"}`` on one line.

``--config``: JSON ``{"users": [...], "clients": [...], "access_token_lifetime": s,
"code_lifetime": s, "refresh_token_lifetime": s}`` (default: two test users, no client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from .server import DEFAULT_USERS, PscSimulator


async def _main(args: argparse.Namespace) -> None:
    config = json.loads(args.config.read_text()) if args.config else {}
    config.setdefault("users", DEFAULT_USERS)
    sim = PscSimulator(cert=args.cert, key=args.key, ca=args.ca, host=args.host,
                       port=args.port, config=config)
    await sim.start()
    print(json.dumps({"url": sim.url, "port": sim.port, "issuer": sim.issuer,
                      "discovery_url": sim.issuer + "/.well-known/openid-configuration"}),
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.peers.psc", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--cert", type=Path, required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    p.add_argument("--ca", type=Path, required=True,
                   help="anchors that verify TLS client certificates (the test PKI bundle)")
    p.add_argument("--config", type=Path, help="users, clients and lifetimes (JSON)")
    try:
        asyncio.run(_main(p.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
