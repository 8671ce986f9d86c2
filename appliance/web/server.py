"""aiohttp on the daemon's loop: ``/healthz`` plus the sub-applications of each role.

Default deny: unknown paths are 404, and the server binds only the configured address. With
``http.tls = true`` the daemon does no TLS itself: the TLS gateway process listens on
``http.bind:http.port`` and forwards to this app on a Unix socket (``appliance.tlsgateway``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from cryptography import x509
from multidict import CIMultiDict

from appliance import __version__
from appliance.component import Health
from appliance.config import Config
from appliance.logs import correlation_id, new_correlation_id
from appliance.tlsgateway.contract import (
    CLIENT_CERT_HEADER,
    FORWARDED_FOR_HEADER,
    GATEWAY_OWNED_HEADERS,
)

log = logging.getLogger(__name__)

HealthProvider = Callable[[], tuple[bool, dict[str, Any]]]


@web.middleware
async def _correlation(request: web.Request, handler: Any) -> web.StreamResponse:
    cid = request.headers.get("X-Correlation-ID", "")
    if cid and cid.isascii() and cid.replace("-", "").isalnum() and len(cid) <= 64:
        correlation_id.set(cid)  # the caller's id, so its logs and ours join up
    else:
        cid = new_correlation_id("h")
    started = time.perf_counter()
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        e.headers["X-Correlation-ID"] = cid
        raise
    resp.headers["X-Correlation-ID"] = cid
    log.debug("http", extra={"method": request.method, "route": request.match_info.route.resource
                             and request.match_info.route.resource.canonical,
                             "status": resp.status,
                             "ms": round((time.perf_counter() - started) * 1000, 1)})
    return resp


def _gateway_headers(behind_gateway: bool) -> Any:
    """Behind the gateway: the request is HTTPS from the client's address (the gateway owns the
    headers that say so, and only it can reach the socket). Without it, nobody may send them."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if behind_gateway:
            remote = request.headers.get(FORWARDED_FOR_HEADER) or request.remote or "-"
            return await handler(request.clone(scheme="https", remote=remote))
        if any(h in request.headers for h in GATEWAY_OWNED_HEADERS):
            headers = CIMultiDict(request.headers)
            for h in GATEWAY_OWNED_HEADERS:
                headers.popall(h, None)
            return await handler(request.clone(headers=headers))
        return await handler(request)

    return middleware


def client_certificate(request: web.Request) -> x509.Certificate | None:
    """The TLS client certificate the gateway verified (against ``hsm.trust_anchors``), if any."""
    value = request.headers.get(CLIENT_CERT_HEADER)
    if not value:
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        raise web.HTTPBadRequest(text="malformed client certificate header") from None


def make_app(health: HealthProvider, subapps: dict[str, web.Application] | None = None,
             *, behind_gateway: bool = False, admin_token: Callable[[], str] | None = None,
             max_body_bytes: int = 64 * 1024**2) -> web.Application:
    """The root application. ``/healthz`` tells anyone ready or not; its detail (components,
    versions, reasons) only to a caller with the admin bearer token ``admin_token()``."""
    app = web.Application(middlewares=[_gateway_headers(behind_gateway), _correlation],
                          client_max_size=max_body_bytes)

    def is_admin(request: web.Request) -> bool:
        if admin_token is None:
            return False
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(given) and hmac.compare_digest(
            given.strip().encode(), admin_token().encode())

    async def healthz(request: web.Request) -> web.Response:
        ok, report = health()
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
        if is_admin(request):
            body.update(version=__version__, components=report)
        return web.json_response(body, status=200 if ok else 503)

    app.router.add_get("/healthz", healthz)
    for prefix, sub in (subapps or {}).items():
        app.add_subapp(prefix, sub)
    return app


class HttpServer:
    """Component wrapping an aiohttp AppRunner: TCP on ``http.bind:http.port`` (plain HTTP), or,
    with ``unix_path``, a Unix socket (mode 0600) that the TLS gateway forwards to."""

    name = "http"

    def __init__(self, config: Config, app: web.Application,
                 unix_path: Path | None = None) -> None:
        if config.http.tls and unix_path is None:
            raise ValueError("http.tls is true: HTTPS is served by the TLS gateway, so the app "
                             "listens on its Unix socket")
        self.config = config
        self.app = app
        self.unix_path = unix_path
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=3.0,
                                     keepalive_timeout=self.config.http.keepalive_timeout)
        await self._runner.setup()
        if self.unix_path is not None:
            site: web.BaseSite = web.UnixSite(self._runner, str(self.unix_path))
            await site.start()
            os.chmod(self.unix_path, 0o600)  # in a 0700 directory: the gateway's user only
            log.info("http listening for the TLS gateway", extra={"socket": str(self.unix_path)})
            return
        site = web.TCPSite(self._runner, self.config.http.bind, self.config.http.port,
                           reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else None
        log.info("http listening", extra={"bind": self.config.http.bind, "port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> Health:
        where: dict[str, Any] = {"socket": str(self.unix_path)} if self.unix_path else \
            {"port": self.port}
        return Health(self._runner is not None, "ok" if self._runner else "stopped", where)
