"""Ingress: HTTPS on ``http.bind:http.port`` with the server key on the token, forwarded as plain
HTTP to the daemon's aiohttp application on its Unix socket.

The TLS server context asks for a client certificate without requiring one (the LAN UI has none,
peer boxes present their ORG certificate) and verifies it against ``hsm.trust_anchors`` during the
handshake. The gateway then passes the verified certificate to the application in
``X-Drimbox-Client-Cert`` (DER, base64) and the client's address in ``X-Forwarded-For``. Whatever a
client sends under those names, or any other gateway-owned header, is dropped first: only the
gateway can reach the application's socket, so the application may believe them.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from .contract import CLIENT_CERT_HEADER, FORWARDED_FOR_HEADER, GATEWAY_OWNED_HEADERS
from .forward import end_to_end, refuse, relay

log = logging.getLogger(__name__)

SESSION = web.AppKey("app_session", aiohttp.ClientSession)


def verified_client_cert(request: web.Request) -> bytes | None:
    """DER of the certificate the client presented; the handshake has verified it already."""
    obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    return der or None


def make_app(app_socket: Path) -> web.Application:
    app = web.Application()

    async def open_session(app: web.Application) -> None:
        # No read timeout: a WADO-RS answer may stream for minutes. Connecting is local.
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(app_socket)), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def close_session(app: web.Application) -> None:
        await app[SESSION].close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def forward(request: web.Request) -> web.StreamResponse:
    if not request.raw_path.startswith("/"):
        return refuse(400, "bad-target", "request targets are paths")
    headers = end_to_end(request.headers, drop=GATEWAY_OWNED_HEADERS)
    der = verified_client_cert(request)
    if der is not None:
        headers[CLIENT_CERT_HEADER] = base64.b64encode(der).decode()
    if request.remote:
        headers[FORWARDED_FOR_HEADER] = request.remote
    # The Host header goes on as the client sent it; the URL's host is only a label.
    target = URL("http://drimbox-app" + request.raw_path, encoded=True)
    try:
        async with request.app[SESSION].request(
                request.method, target, headers=headers, allow_redirects=False,
                data=request.content if request.body_exists else None) as answer:
            return await relay(request, answer)
    except aiohttp.ClientConnectorError:
        return refuse(503, "app-unavailable", "the box is starting or stopping; try again")
    except aiohttp.ClientError as e:
        log.warning("ingress: the application failed", extra={"error": type(e).__name__})
        return refuse(502, "app-failed", "the box did not answer")
