"""Benchmark: TLS handshakes per second with the server key on the token vs in a file, and token
signatures per second. Not run in CI; takes well under a minute on 2 cores.

    python bench/bench_keys.py [--handshakes 60] [--signatures 200] [--json out.json]

Handshakes run in memory (ssl.MemoryBIO pairs, one thread), so the figure is the CPU + token cost
of a full TLS 1.3 handshake (server signs once per handshake), without network noise. The file key
is measured before and after pkcs11-provider is loaded, to show what loading it costs the others.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from appliance.keys import tls
from appliance.keys.testpki import make_test_pki


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    for _ in range(50):
        for obj, done in ((client, done_c), (server, done_s)):
            if not done:
                try:
                    obj.do_handshake()
                    if obj is client:
                        done_c = True
                    else:
                        done_s = True
                except ssl.SSLWantReadError:
                    pass
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        if done_c and done_s:
            return
    raise RuntimeError("handshake did not complete")


def rate(fn, n: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--handshakes", type=int, default=60)
    ap.add_argument("--signatures", type=int, default=200)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    pki = make_test_pki(work)
    s = pki.structures[0]

    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), x509.Name.from_rfc4514_string("CN=localhost"),
                     "tls-server", issuer="server", hosts=["localhost"])
    (work / "file.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (work / "file.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def file_server() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(work / "file.pem", work / "file.key")
        return ctx

    client = ssl.create_default_context(cafile=str(pki.bundle))
    results: dict[str, float] = {}
    fs0 = file_server()
    results["file_key_handshakes_per_s_before_provider"] = rate(lambda: handshake(client, fs0),
                                                                a.handshakes)

    token_server = tls.server_context(pki.hsm_config(0), "server", s.server_cert)
    fs1 = file_server()
    # alternate the contenders to even out noise from other processes on the machine
    tok_rates, file_rates = [], []
    for _ in range(3):
        tok_rates.append(rate(lambda: handshake(client, token_server), a.handshakes // 3))
        file_rates.append(rate(lambda: handshake(client, fs1), a.handshakes // 3))
    results["token_key_handshakes_per_s"] = sorted(tok_rates)[1]
    results["file_key_handshakes_per_s"] = sorted(file_rates)[1]

    with pki.token() as tok:
        results["token_rsa_sha256_signatures_per_s"] = rate(
            lambda: tok.sign("sign", b"x" * 512), a.signatures)
        results["token_rsa_pss_signatures_per_s"] = rate(
            lambda: tok.sign("sign", b"x" * 512, "rsa-pss-sha256"), a.signatures)
    results["software_rsa_sha256_signatures_per_s"] = rate(
        lambda: key.sign(b"x" * 512, padding.PKCS1v15(), hashes.SHA256()), a.signatures)
    results["handshake_ratio_token_over_file"] = (results["token_key_handshakes_per_s"]
                                                  / results["file_key_handshakes_per_s"])
    results["signature_ratio_token_over_software"] = (
        results["token_rsa_sha256_signatures_per_s"]
        / results["software_rsa_sha256_signatures_per_s"])
    for k, v in results.items():
        print(f"{k:48s} {v:10.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
