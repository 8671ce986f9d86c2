"""Egress: the daemon's plain HTTP on a Unix socket becomes mTLS to a configured upstream only.

Each test runs a real gateway process (``python -m appliance.tlsgateway``) on a source box's
configuration, against the strict DMP simulator (which requires a client certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from appliance import config as config_mod
from appliance.dmp import DmpClient, DmpPermanentError, DmpRetryableError
from appliance.tlsgateway import contract
from tests.dmp.kos import sample_submission
from tests.gateway.conftest import Gateway, egress, start_gateway
from tests.peers.network import SourceBox, source_box_config

pytestmark = pytest.mark.integration


class CountingListener:
    """A TCP server on loopback that only counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def raw_request(path: Path, request: bytes) -> bytes:
    """Bytes sent as they are on the egress socket (requests aiohttp's client cannot make)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_default_deny_nothing_is_dialled(gateway: Gateway) -> None:
    listener = CountingListener()
    target = f"127.0.0.1:{listener.port}"
    sock = gateway.plan.egress_socket
    try:
        for path in (f"/{target}/x", "/evil/x", "/DMP/x", f"/x?u=http://{target}/", "/",
                     "/_pingx"):
            status, headers, body = egress(gateway.plan, "GET", path,
                                           headers={"Host": target})
            assert status in (400, 403), (path, status, body)
            assert headers[contract.GATEWAY_ERROR_HEADER] in ("upstream-not-allowed",
                                                              "bad-target")
        # Proxy-style requests (absolute-form targets, CONNECT), and an encoded name.
        for req in (f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n",
                    f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n",
                    f"GET /%64mp/x HTTP/1.1\r\nHost: {target}\r\n"):
            answer = raw_request(sock, (req + "Connection: close\r\n\r\n").encode())
            assert answer.split(b" ", 2)[1] in (b"400", b"403", b"404", b"405"), answer[:200]
        assert listener.accepted == 0
    finally:
        listener.close()


def test_the_dmp_upstream_over_mtls_with_the_token_key(gateway: Gateway, pki: Any) -> None:
    # The simulator refuses any TLS client without a certificate of the test PKI.
    status, headers, body = egress(gateway.plan, "GET", "/dmp/_inspect/stats")
    assert status == 200, body
    assert isinstance(json.loads(body), dict)
    assert contract.GATEWAY_ERROR_HEADER not in headers
    # The supervisor's ping names the process and its upstreams.
    status, _, body = egress(gateway.plan, "GET", "/_ping")
    assert status == 200
    assert json.loads(body) == {"pid": gateway.proc.pid, "ingress": False,
                                "upstreams": {"dmp": "ok"}}


def test_sockets_and_files_are_private(gateway: Gateway, pki: Any) -> None:
    d = gateway.plan.directory
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(gateway.plan.egress_socket.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(gateway.plan.egress_socket.stat().st_mode)
    files = [p for p in d.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".key.pem") for p in files)
    pin = pki.pin_file.read_text().strip()
    for p in files:
        if not p.name.endswith("-chain.pem"):  # certificates are public; the rest is not
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
        assert pin not in p.read_text(errors="replace"), p


class FileKeySigner:
    """A software key: these DMP requests fail before any signature is checked."""

    algorithm = "rsa-sha256"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(65537, 2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "file key")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                            .public_key(self.key.public_key()).serial_number(1)
                            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                            .sign(self.key, hashes.SHA256()))

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def variant(tmp: Path, pki: Any, sim: Any, pacs: Any, name: str, old: str, new: str
            ) -> SourceBox:
    box = source_box_config(tmp / name, pki, sim, pacs)
    text = box.config_path.read_text()
    assert old in text
    box.config_path.write_text(text.replace(old, new))
    return box


async def publish_via(gw: Gateway, config_path: Path) -> None:
    dmp = config_mod.load(config_path).dmp
    client = DmpClient(dmp, FileKeySigner(),
                       connector=aiohttp.UnixConnector(path=str(gw.plan.egress_socket)),
                       endpoint=contract.egress_url("dmp", dmp.url))
    async with client:
        await client.publish(sample_submission(2))


def test_upstream_failures_are_retryable_for_the_dmp_client(tmp_path: Path, pki: Any,
                                                            dmp_simulator: Any, pacs: Any
                                                            ) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    stranger = tmp_path / "stranger-ca.pem"
    stranger.write_bytes(FileKeySigner().certificate.public_bytes(serialization.Encoding.PEM))
    cases = {
        "unreachable": (f'url = "{dmp_simulator.url}"',
                        f'url = "https://127.0.0.1:{port}/si-dmp-server/v2/services"',
                        "cannot connect to upstream dmp"),
        # The simulator's certificate does not chain to these anchors.
        "tls": (f'ca_file = "{pki.bundle}"', f'ca_file = "{stranger}"',
                "TLS with upstream dmp failed"),
    }
    for name, (old, new, expected) in cases.items():
        box = variant(tmp_path, pki, dmp_simulator, pacs, name, old, new)
        gw = start_gateway(box.config_path, box.env)
        try:
            with pytest.raises(DmpRetryableError, match=expected):
                asyncio.run(publish_via(gw, box.config_path))
        finally:
            gw.stop()


def test_an_unknown_upstream_is_a_permanent_refusal(gateway: Gateway,
                                                    source_config: SourceBox) -> None:
    dmp = config_mod.load(source_config.config_path).dmp

    async def go() -> None:
        client = DmpClient(dmp, FileKeySigner(), connector=aiohttp.UnixConnector(
            path=str(gateway.plan.egress_socket)), endpoint=contract.egress_url("peer", dmp.url))
        async with client:
            await client.publish(sample_submission(1))

    with pytest.raises(DmpPermanentError, match="HTTP403"):
        asyncio.run(go())


def test_answers_larger_than_the_limit_are_refused(tmp_path: Path, pki: Any,
                                                   dmp_simulator: Any, pacs: Any) -> None:
    box = variant(tmp_path, pki, dmp_simulator, pacs, "small", "timeout = 10.0",
                  "timeout = 10.0\nmax_response_bytes = 64")
    gw = start_gateway(box.config_path, box.env)
    base = urlsplit(dmp_simulator.url).path
    try:
        # An empty request: the simulator answers with a SOAP fault of some hundred bytes.
        status, headers, body = egress(gw.plan, "POST", f"/dmp{base}/registry", data=b"")
        assert status == 502, body
        assert headers[contract.GATEWAY_ERROR_HEADER] == "response-too-large"
    finally:
        gw.stop()
