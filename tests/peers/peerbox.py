"""A peer DRIMbox's client side, as its own process: WADO-RS requests over mutual TLS with the
peer structure's ORG auth key on its SoftHSM token (the key never leaves it).

It runs apart from the test process because pkcs11-provider must not be loaded where the test
forks (ARCHITECTURE.md §6). It reads one JSON request per line on standard input
(``{"url": ..., "headers": {...}}``) and answers one JSON line each: status, headers, the body
(base64) or the TLS error when the handshake fails.

    python -m tests.peers.peerbox --module M --token-label L --pin-file P --cert CHAIN.pem \\
        --ca BUNDLE.pem
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
from pathlib import Path

import aiohttp

from appliance.config import HsmConfig
from appliance.keys import tls


async def serve(ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    # One connection per request: each test case is its own TLS handshake.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True),
                                     auto_decompress=False) as http:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            req = json.loads(line)
            answer: dict[str, object]
            try:
                async with http.get(req["url"], headers=req.get("headers", {}),
                                    timeout=aiohttp.ClientTimeout(total=60)) as r:
                    body = await r.read()
                    answer = {"status": r.status, "headers": dict(r.headers),
                              "body": base64.b64encode(body).decode()}
            except (aiohttp.ClientError, ssl.SSLError, OSError) as e:
                answer = {"status": 0, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(answer), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--module", type=Path, required=True)
    p.add_argument("--token-label", required=True)
    p.add_argument("--pin-file", type=Path, required=True)
    p.add_argument("--cert", type=Path, required=True, help="leaf + intermediates (PEM)")
    p.add_argument("--ca", type=Path, required=True, help="anchors of the source's server cert")
    p.add_argument("--key-label", default="auth")
    a = p.parse_args()
    hsm = HsmConfig(module=a.module, token_label=a.token_label, pin_file=a.pin_file,
                    auth_key_label=a.key_label, sign_key_label="sign")
    # The certificate is not checked here: some tests present an expired one on purpose.
    ctx = tls.client_context(hsm, a.key_label, a.cert, a.ca, check_certificate=False)
    print(json.dumps({"ready": True}), flush=True)
    asyncio.run(serve(ctx))


if __name__ == "__main__":
    main()
