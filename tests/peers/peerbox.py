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
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

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


class PeerClient:
    """Drives one peer process from a test or the demo: ``get(url, headers)`` -> answer dict
    (``status``, ``headers``, ``body`` bytes; ``status`` 0 and ``error`` when TLS failed)."""

    def __init__(self, pki: Any, structure: int, cert_chain: Path, env: dict[str, str]) -> None:
        hsm = pki.hsm_config(structure)
        self.certificate = x509.load_pem_x509_certificate(Path(cert_chain).read_bytes())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.peerbox", "--module", str(hsm.module),
             "--token-label", hsm.token_label, "--pin-file", str(hsm.pin_file),
             "--cert", str(cert_chain), "--ca", str(pki.bundle)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=Path(__file__).resolve().parents[2])
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line or json.loads(line) != {"ready": True}:
            self.proc.kill()
            raise RuntimeError("the peer client did not start")

    def get(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"url": url, "headers": headers}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        if "body" in answer:
            answer["body"] = base64.b64decode(answer["body"])
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def dicom_parts(answer: dict[str, Any]) -> list[bytes]:
    """The part bodies of a multipart/related answer."""
    ctype = answer["headers"]["Content-Type"]
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in answer["body"].split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
    return out


if __name__ == "__main__":
    main()
