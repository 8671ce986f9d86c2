"""TLS with token keys through pkcs11-provider: aiohttp <-> aiohttp mTLS in both directions,
openssl s_server / s_client as independent peers, the TLS 1.2 / PKCS#1 fallback, refusals."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from appliance.keys import CertificateRefused, KeysError, provider, tls
from appliance.keys.testpki import TestPki

REPO = Path(__file__).resolve().parents[2]


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.skip("openssl command not installed")
    return tool


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


async def _serve(ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    async def whoami(req: web.Request) -> web.Response:
        cert = req.transport.get_extra_info("peercert") if req.transport else None
        subject = {k: v for rdn in (cert or {}).get("subject", ()) for k, v in rdn}
        return web.json_response({"ou": subject.get("organizationalUnitName"),
                                  "cn": subject.get("commonName")})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_aiohttp_mtls_both_keys_on_tokens(tls_pki: TestPki) -> None:
    pki = tls_pki
    a, b = pki.structures
    server = tls.server_context(pki.hsm_config(1), "server", b.server_cert, client_ca=pki.bundle)
    runner, port = await _serve(server)
    try:
        client = tls.client_context(pki.hsm_config(0), "auth", a.auth_cert, pki.bundle)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://localhost:{port}/whoami", ssl=client) as r:
                seen = await r.json()
        # the server saw structure A's ORG certificate; the client verified B's server cert
        assert seen == {"ou": a.structure_id, "cn": a.spec.box_name}
        # a client without a certificate is turned away by the server requiring one
        anon = ssl.create_default_context(cafile=str(pki.bundle))
        async with aiohttp.ClientSession() as s:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                async with s.get(f"https://localhost:{port}/whoami", ssl=anon) as r:
                    await r.read()
    finally:
        await runner.cleanup()


async def test_server_key_on_token_plain_tls(tls_pki: TestPki) -> None:
    """The box's HTTPS server: token key, no client certificate asked."""
    pki = tls_pki
    server = tls.server_context(pki.hsm_config(0), "server", pki.structures[0].server_cert)
    runner, port = await _serve(server)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.bundle))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://localhost:{port}/whoami", ssl=ctx) as r:
                assert r.status == 200 and (await r.json())["ou"] is None
    finally:
        await runner.cleanup()


@pytest.fixture
def file_server(tls_pki: TestPki, tmp_path: Path, port_factory) -> Iterator[tuple[int, Path]]:
    """``openssl s_server`` with a software key, requiring a client cert from the ORG CA."""
    pki = tls_pki
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                     "localhost")]),
                     "tls-server", issuer="server", hosts=["localhost", "127.0.0.1"])
    (tmp_path / "srv.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "srv.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    port = port_factory()
    log = tmp_path / "s_server.log"
    proc = subprocess.Popen([_openssl(), "s_server", "-accept", f"127.0.0.1:{port}",
                             "-cert", str(tmp_path / "srv.pem"), "-key", str(tmp_path / "srv.key"),
                             "-Verify", "2", "-CAfile", str(pki.bundle), "-verify_return_error",
                             "-www"], stdout=log.open("wb"), stderr=subprocess.PIPE,
                            env={k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"})
    try:
        _wait_port(port, proc)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(10)


async def test_client_with_token_key_against_openssl_s_server(tls_pki: TestPki,
                                                              file_server) -> None:
    pki = tls_pki
    port, _ = file_server
    client = tls.client_context(pki.hsm_config(0), "auth", pki.structures[0].auth_cert,
                                pki.bundle)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{port}/", ssl=client) as r:
            page = await r.text()
    assert f"OU={pki.structures[0].structure_id}" in page.replace(" = ", "=")
    assert "TLSv1.3" in page


def test_openssl_s_client_against_token_server(tls_pki: TestPki, port_factory) -> None:
    """An independent client (openssl s_client) verifies the chain served with the token key."""
    pki = tls_pki
    import asyncio
    import threading

    ready = threading.Event()
    port_box: list[int] = []
    loop = asyncio.new_event_loop()

    async def run() -> web.AppRunner:
        ctx = tls.server_context(pki.hsm_config(1), "server", pki.structures[1].server_cert,
                                 client_ca=pki.bundle)
        runner, port = await _serve(ctx)
        port_box.append(port)
        ready.set()
        return runner

    def thread() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(run())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    assert ready.wait(30)
    try:
        # s_client authenticates with structure A's token key, through the provider config the
        # box wrote (OPENSSL_CONF); the key file is the URI-PEM.
        key_file = provider.write_key_file(pki.structures[0].token_label, "auth",
                                           pki.structures[0].pin_file)
        conf = provider.activate(str(pki.module))
        r = subprocess.run([_openssl(), "s_client", "-connect", f"127.0.0.1:{port_box[0]}",
                            "-servername", "localhost", "-verify_hostname", "localhost", "-ign_eof",
                            "-CAfile", str(pki.bundle), "-verify_return_error",
                            "-cert", str(pki.structures[0].auth_cert), "-key", str(key_file)],
                           input=b"GET /whoami HTTP/1.0\r\nHost: localhost\r\n\r\n",
                           capture_output=True, timeout=60,
                           env={**os.environ, "OPENSSL_CONF": str(conf)})
        out = r.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, out + r.stderr.decode(errors="replace")
        assert f'"ou": "{pki.structures[0].structure_id}"' in out, out[-3000:]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(30)


# A token without RSA-PSS (hsm.rsa_pss = false): the provider policy is per process, so this runs
# in its own process, as the DMP egress would.
NO_PSS = r'''
import sys, urllib.request
from pathlib import Path
from appliance.config import HsmConfig
from appliance.keys import tls
module, token, pin, cert, bundle, port = sys.argv[1:]
cfg = HsmConfig(module=Path(module), token_label=token, pin_file=Path(pin), auth_key_label="auth",
                sign_key_label="sign", rsa_pss=False, trust_anchors=(Path(bundle),))
ctx = tls.client_context(cfg, "auth", cert, bundle)
print(urllib.request.urlopen(f"https://localhost:{port}/", context=ctx, timeout=30).read().decode())
'''


def test_tls12_pkcs1_fallback_for_tokens_without_pss(tls_pki: TestPki, file_server) -> None:
    pki = tls_pki
    port, _ = file_server
    s = pki.structures[0]
    r = subprocess.run([sys.executable, "-c", NO_PSS, str(pki.module), s.token_label,
                        str(s.pin_file), str(s.auth_cert), str(pki.bundle), str(port)],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "Protocol  : TLSv1.2" in r.stdout
    offered = next(line for line in r.stdout.splitlines()
                   if line.startswith("Signature Algorithms:"))
    assert offered.split(":", 1)[1].strip() == "RSA+SHA256:RSA+SHA384"  # no PSS offered


def test_key_file_and_conf_are_private_and_hold_no_pin(tls_pki: TestPki) -> None:
    pki = tls_pki
    conf = provider.activate(str(pki.module))
    key = provider.write_key_file(pki.token_label, "auth", pki.pin_file)
    pin = pki.pin_file.read_text()
    for p in (conf, key):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert pin not in p.read_text()
    assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
    assert provider.parse_uri_pem(key.read_text()) == provider.key_uri(
        pki.token_label, "auth", pki.pin_file)


def test_expired_or_wrong_usage_or_foreign_certificate_is_refused(tls_pki: TestPki,
                                                                 tmp_path: Path) -> None:
    pki = tls_pki
    cfg = pki.hsm_config(0)
    a = pki.structures[0]
    with pki.token() as tok:
        pub = tok.public_key("auth")
        subject = tok.certificate("auth").subject
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired = pki.issue(pub, subject, "tls-client", not_before=past,
                        not_after=past + dt.timedelta(days=365))
    (tmp_path / "expired.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRefused, match="expired"):
        tls.client_context(cfg, "auth", tmp_path / "expired.pem", pki.bundle)
    # the signature certificate is not a TLS client certificate
    with pytest.raises(CertificateRefused, match="not for tls-client"):
        tls.client_context(cfg, "sign", a.sign_cert, pki.bundle)
    # the ORG auth certificate is not a server certificate
    with pytest.raises(CertificateRefused, match="not for tls-server"):
        tls.server_context(cfg, "auth", a.auth_cert)
    # another structure's certificate does not match this token's key
    with pytest.raises(KeysError, match="does not match"):
        tls.client_context(cfg, "auth", pki.structures[1].auth_cert, pki.bundle)
    # a certificate from outside the configured trust anchors
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    rogue = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    foreign = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(x509.Name.from_rfc4514_string("CN=ROGUE CA"))
               .public_key(pub).serial_number(1).not_valid_before(now)
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), critical=True)
               .sign(rogue, hashes.SHA256()))
    (tmp_path / "foreign.pem").write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRefused, match="not issued by a configured trust anchor"):
        tls.client_context(cfg, "auth", tmp_path / "foreign.pem", pki.bundle)


def test_missing_token_key_gives_a_clear_error(tls_pki: TestPki) -> None:
    pki = tls_pki
    from appliance.keys import KeyNotFound

    # a certificate exists but the token has no key by that label
    with pytest.raises(KeyNotFound, match="no public key labelled 'ghost'"):
        tls.client_context(pki.hsm_config(0), "ghost", pki.structures[0].auth_cert, pki.bundle)


def test_forked_child_cannot_use_the_provider(tls_pki: TestPki) -> None:
    pki = tls_pki
    provider.activate(str(pki.module))
    pid = os.fork()
    if pid == 0:  # child: must refuse, never touch the inherited PKCS#11 state
        code = 3
        try:
            tls.client_context(pki.hsm_config(0), "auth", pki.structures[0].auth_cert,
                               pki.bundle)
        except KeysError as e:
            code = 0 if "forked" in str(e) else 4
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_box_https_context_from_config(tls_pki: TestPki, tmp_path: Path) -> None:
    """One HTTPS server for the LAN UI (no client certificate) and peers (ORG certificate)."""
    from appliance.config import example, parse

    pki = tls_pki
    b = pki.structures[1]
    text = example(str(tmp_path / "data")).replace(
        "tls = false", f'tls = true\ncert_file = "{b.server_cert}"\nserver_key_label = "server"')
    text = text.replace('token_label = "drimbox"', f'token_label = "{b.token_label}"').replace(
        "/run/credentials/drimbox.service/hsm-pin", str(b.pin_file)).replace(
        'sign_key_label = "sign"', f'sign_key_label = "sign"\ntrust_anchors = ["{pki.bundle}"]')
    cfg = parse(text)
    runner, port = await _serve(tls.box_server_context(cfg))
    try:
        lan = ssl.create_default_context(cafile=str(pki.bundle))
        peer = tls.client_context(pki.hsm_config(0), "auth", pki.structures[0].auth_cert,
                                  pki.bundle)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://localhost:{port}/whoami", ssl=lan) as r:
                assert (await r.json())["ou"] is None
            async with s.get(f"https://localhost:{port}/whoami", ssl=peer) as r:
                assert (await r.json())["ou"] == pki.structures[0].structure_id
        key_files = list((cfg.runtime_dir / "keys" / "keys").glob("*.key.pem"))
        assert key_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in key_files)
    finally:
        await runner.cleanup()
    no_cert = parse(text.replace(f'cert_file = "{b.server_cert}"\n', ""))
    with pytest.raises(KeysError, match="http.cert_file"):
        tls.box_server_context(no_cert)


async def test_signatures_and_handshakes_share_the_token(tls_pki: TestPki) -> None:
    """The daemon signs (python-pkcs11) while TLS handshakes (pkcs11-provider) use the same
    module and token: both must keep working side by side."""
    import asyncio
    import threading

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pki = tls_pki
    a = pki.structures[0]
    server = tls.server_context(pki.hsm_config(0), "server", a.server_cert, client_ca=pki.bundle)
    runner, port = await _serve(server)
    errors: list[BaseException] = []
    tok = pki.token(0)
    tok.open()
    pub = tok.certificate("sign").public_key()

    def signer() -> None:
        try:
            for i in range(60):
                d = str(i).encode()
                pub.verify(tok.sign("sign", d), d, padding.PKCS1v15(), hashes.SHA256())
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)

    t = threading.Thread(target=signer)
    t.start()
    try:
        client = tls.client_context(pki.hsm_config(0), "auth", a.auth_cert, pki.bundle)

        async def one() -> str:
            conn = aiohttp.TCPConnector(force_close=True)  # a new handshake every time
            async with aiohttp.ClientSession(connector=conn) as s:
                async with s.get(f"https://localhost:{port}/whoami", ssl=client) as r:
                    return (await r.json())["ou"]

        results = await asyncio.gather(*(one() for _ in range(20)))
        assert results == [a.structure_id] * 20
    finally:
        t.join(60)
        tok.close()
        await runner.cleanup()
    assert errors == []
