"""The daemon's app and the headers the gateway owns (in process: appliance.web.server).

Behind the gateway (its Unix socket, which only the gateway can reach) the app takes the scheme,
the client address and the client certificate from the gateway. Serving plain HTTP itself
(``http.tls = false``), it lets nobody set them.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.tlsgateway import contract
from appliance.web.server import client_certificate, make_app

pytestmark = pytest.mark.unit


def _app(behind_gateway: bool) -> web.Application:
    async def who(request: web.Request) -> web.Response:
        cert = client_certificate(request)
        return web.json_response({
            "scheme": request.scheme, "remote": request.remote,
            "cert": cert.subject.rfc4514_string() if cert else None,
            "owned": [h for h in contract.GATEWAY_OWNED_HEADERS if h in request.headers]})

    sub = web.Application()
    sub.router.add_get("/who", who)
    return make_app(lambda: (True, {}), {"/t": sub}, behind_gateway=behind_gateway)


async def _who(app: web.Application, headers: dict[str, str]) -> tuple[int, Any]:
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/t/who", headers=headers)
        return r.status, await r.json() if r.status == 200 else await r.text()


def _cert_header(pki: Any) -> str:
    cert = x509.load_pem_x509_certificate(pki.structures[1].auth_cert.read_bytes())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


async def test_behind_the_gateway_its_headers_are_believed(pki: Any) -> None:
    status, body = await _who(_app(True), {contract.CLIENT_CERT_HEADER: _cert_header(pki),
                                           contract.FORWARDED_FOR_HEADER: "192.0.2.7"})
    assert status == 200
    assert body["scheme"] == "https" and body["remote"] == "192.0.2.7"
    assert f"OU={pki.structures[1].structure_id}" in body["cert"]
    status, _ = await _who(_app(True), {contract.CLIENT_CERT_HEADER: "not base64!"})
    assert status == 400


async def test_without_the_gateway_nobody_may_set_them(pki: Any) -> None:
    status, body = await _who(_app(False), {contract.CLIENT_CERT_HEADER: _cert_header(pki),
                                            contract.FORWARDED_FOR_HEADER: "192.0.2.7",
                                            "forwarded": "for=192.0.2.7"})
    assert status == 200
    assert body == {"scheme": "http", "remote": "127.0.0.1", "cert": None, "owned": []}
