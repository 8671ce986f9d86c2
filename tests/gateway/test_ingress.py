"""Ingress: HTTPS with the server key on the token, forwarded to the daemon's app socket.

First a real gateway process in front of a small aiohttp app on the app socket that shows what
it received (so the headers can be checked exactly), then a whole ``drimbox run`` with
``http.tls = true``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.tlsgateway import contract
from appliance.web.server import client_certificate
from tests.gateway.conftest import Gateway, box_plan, maps_provider, start_gateway
from tests.peers.network import SourceBox, source_box_config, with_tls

pytestmark = pytest.mark.integration


class Backend:
    """Stands where the daemon's app listens; records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        cert = client_certificate(request)
        self.seen.append({"headers": request.headers.copy(), "cert": cert,
                          "sha256": hashlib.sha256(body).hexdigest()})
        return web.json_response({"ok": True}, headers={
            "X-Echo": "1", "X-Correlation-ID": request.headers.get("X-Correlation-ID", "")})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "multipart/related; boundary=b"})
        await resp.prepare(request)
        await resp.write(b"--b\r\n\r\nfirst part\r\n")
        await self.release.wait()  # only once the client has the first part
        await resp.write(b"--b\r\n\r\nsecond part\r\n--b--\r\n")
        await resp.write_eof()
        return resp

    async def start(self, path: Path) -> None:
        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(path)).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def front(source_config: SourceBox, pki: Any) -> AsyncIterator[tuple[Gateway, Backend,
                                                                            str]]:
    box = with_tls(source_config, pki)
    gw = start_gateway(box.config_path, box.env)
    backend = Backend()
    await backend.start(gw.plan.app_socket)
    try:
        yield gw, backend, f"https://localhost:{box.http}"
    finally:
        await backend.stop()
        gw.stop()


def anonymous(pki: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.bundle))


async def test_client_certificate_reaches_the_app_and_spoofing_is_stripped(front, pki) -> None:
    from tests.dmp.pki import box_client_context

    gw, backend, base = front
    peer = pki.structures[1]
    peer_der = x509.load_pem_x509_certificate(peer.auth_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    forged = base64.b64encode(x509.load_pem_x509_certificate(
        pki.structures[0].auth_cert.read_bytes()).public_bytes(serialization.Encoding.DER))
    spoof = {contract.CLIENT_CERT_HEADER: forged.decode(), "x-drimbox-client-cert": "x",
             "X-Forwarded-For": "10.6.6.6", "Forwarded": "for=10.6.6.6",
             "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-End": "kept",
             "X-Correlation-ID": "abc-123"}
    async with aiohttp.ClientSession() as s:
        # The LAN UI: no client certificate. The forged header never reaches the app.
        async with s.get(f"{base}/echo", ssl=anonymous(pki), headers=spoof) as r:
            assert r.status == 200 and r.headers["X-Echo"] == "1"
            assert r.headers["X-Correlation-ID"] == "abc-123"
        # A peer box with its ORG certificate, also trying to pass another structure's.
        async with s.get(f"{base}/echo", ssl=box_client_context(pki, 1), headers=spoof) as r:
            assert r.status == 200
        # Upload: the body arrives whole.
        blob = os.urandom(3 * 1024 * 1024)
        async with s.post(f"{base}/echo", ssl=anonymous(pki), data=blob) as r:
            assert r.status == 200
    lan, peer_seen, upload = backend.seen
    assert contract.CLIENT_CERT_HEADER not in lan["headers"] and lan["cert"] is None
    assert peer_seen["headers"].getall(contract.CLIENT_CERT_HEADER) == [
        base64.b64encode(peer_der).decode()]
    assert peer_seen["cert"].subject.get_attributes_for_oid(
        x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == peer.structure_id
    for seen in (lan, peer_seen):
        h = seen["headers"]
        assert h.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert "Forwarded" not in h and "X-Hop" not in h and h["X-End"] == "kept"
        assert h["X-Correlation-ID"] == "abc-123" and h["Host"] == base.split("//")[1]
    assert upload["sha256"] == hashlib.sha256(blob).hexdigest()


async def test_answers_stream_through(front, pki) -> None:
    gw, backend, base = front
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/stream", ssl=anonymous(pki)) as r:
            assert r.status == 200
            # A buffering gateway would hold the first part until the app finished: never.
            first = await asyncio.wait_for(r.content.readuntil(b"part\r\n"), 10)
            assert first.endswith(b"first part\r\n")
            backend.release.set()
            assert (await asyncio.wait_for(r.content.read(), 10)).endswith(b"--b--\r\n")


async def test_head_has_the_headers_and_no_body(front, pki) -> None:
    gw, backend, base = front
    async with aiohttp.ClientSession() as s:
        async with s.head(f"{base}/echo", ssl=anonymous(pki)) as r:
            assert r.status == 200 and r.headers["X-Echo"] == "1"
            assert await r.read() == b""
        async with s.get(f"{base}/echo", ssl=anonymous(pki)) as r:  # the connection still works
            assert r.status == 200 and await r.json() == {"ok": True}


async def test_the_app_down_is_a_clear_503(front, pki) -> None:
    gw, backend, base = front
    await backend.stop()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/echo", ssl=anonymous(pki)) as r:
            assert r.status == 503
            assert r.headers[contract.GATEWAY_ERROR_HEADER] == "app-unavailable"


async def test_openssl_s_client_as_the_peer(front, pki) -> None:
    gw, backend, base = front
    port = base.rsplit(":", 1)[1]
    request = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-CAfile", str(pki.bundle), "-verify_return_error", "-ign_eof",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(request), 30)
    text = out.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text
    assert "HTTP/1.1 200 OK" in text and '{"ok": true}' in text
    assert f"OU = {pki.structures[0].structure_id}" in text  # the structure's server certificate


def test_a_box_serving_https_through_its_gateway(tmp_path: Path, pki, dmp_simulator,
                                                 pacs) -> None:
    # The test reads DICOMweb as a site tool on loopback; the gateway passes the client's
    # address on, and the guard sees 127.0.0.1 (peers are tested in tests/trust).
    box = with_tls(source_box_config(tmp_path / "box", pki, dmp_simulator, pacs,
                                     extra='\n[dicomweb]\nopen_to = ["127.0.0.1"]\n'), pki)
    box.start()
    try:
        gateway = box.gateway_pid()
        status, health = box.health()
        assert status == 200 and health["components"]["tls-gateway"]["ready"] is True
        # Correlation ids: the caller's is echoed, otherwise the box makes one.
        req = urllib.request.Request(f"{box.base}/healthz",
                                     headers={"X-Correlation-ID": "peer-42"})
        with urllib.request.urlopen(req, context=box.tls_context, timeout=10) as r:
            assert r.headers["X-Correlation-ID"] == "peer-42"
        with urllib.request.urlopen(f"{box.base}/healthz", context=box.tls_context,
                                    timeout=10) as r:
            assert r.headers["X-Correlation-ID"].startswith("h")

        # A study from the PACS (admin API, a POST through the gateway), then QIDO-RS and
        # metadata: the URLs it gives are HTTPS, on the host the client asked for.
        files = _study(tmp_path / "study")
        pacs.upload(files)
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        token = (box.data_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(f"{box.base}/api/admin/pacs/retrieve", method="POST",
                                     data=json.dumps({"study_uid": study}).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=box.tls_context, timeout=60) as r:
            assert json.loads(r.read())["received"] == len(files)
        with urllib.request.urlopen(f"{box.base}/dicom-web/studies?StudyInstanceUID={study}",
                                    context=box.tls_context, timeout=10) as r:
            (found,) = json.loads(r.read())
        assert found["00081190"]["Value"][0] == f"{box.base}/dicom-web/studies/{study}"

        # The server certificate is the structure's, from the token.
        with socket.create_connection(("127.0.0.1", box.http)) as raw:
            with box.tls_context.wrap_socket(raw) as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0] \
            .value == pki.structures[0].structure_id
        # Plain HTTP is not served on that port.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{box.http}/healthz", timeout=5).read()

        # ARCHITECTURE.md §2: the box listens on DICOM, HL7 and HTTPS, nothing else. The
        # daemon has DICOM and HL7; its gateway child has HTTPS, and the provider.
        import psutil

        def listening(pid: int) -> list[tuple[str, int]]:
            return sorted((c.laddr.ip, c.laddr.port) for c in
                          psutil.Process(pid).net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN)

        assert [c.pid for c in psutil.Process(box.proc.pid).children(recursive=True)] == \
            [gateway]
        assert listening(box.proc.pid) == sorted([("127.0.0.1", pacs.box_dicom_port),
                                                  ("127.0.0.1", box.hl7)])
        assert listening(gateway) == [("127.0.0.1", box.http)]
        assert maps_provider(gateway) and not maps_provider(box.proc.pid)
        plan = box_plan(box)
        for sock in (plan.app_socket, plan.egress_socket):
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(plan.app_socket.parent.stat().st_mode) == 0o700
    finally:
        box.stop()


def _study(out: Path) -> list[Path]:
    from appliance.generate import synthetic_study

    return synthetic_study("CT", 2, out_dir=out, accession="ACC-HTTPS")
