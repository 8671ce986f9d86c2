"""aiohttp on the daemon's loop: ``/healthz`` plus the sub-applications of each role.

Default deny: unknown paths are 404, and the server binds only the configured address.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, Callable

from aiohttp import web

from appliance import __version__
from appliance.component import Health
from appliance.config import Config
from appliance.logs import correlation_id, new_correlation_id

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


def make_app(health: HealthProvider, subapps: dict[str, web.Application] | None = None
             ) -> web.Application:
    app = web.Application(middlewares=[_correlation], client_max_size=64 * 1024**2)

    async def healthz(_request: web.Request) -> web.Response:
        ok, report = health()
        return web.json_response({"status": "ok" if ok else "unavailable",
                                  "version": __version__, "components": report},
                                 status=200 if ok else 503)

    app.router.add_get("/healthz", healthz)
    for prefix, sub in (subapps or {}).items():
        app.add_subapp(prefix, sub)
    return app


class HttpServer:
    """Component wrapping an aiohttp AppRunner + TCPSite."""

    name = "http"

    def __init__(self, config: Config, app: web.Application,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if config.http.tls and ssl_context is None:
            raise ValueError("http.tls is true but no TLS context was given")
        self.config = config
        self.app = app
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=3.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.bind, self.config.http.port,
                           ssl_context=self.ssl_context, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else None
        log.info("http listening", extra={"bind": self.config.http.bind, "port": self.port,
                                          "tls": self.ssl_context is not None})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> Health:
        return Health(self._runner is not None, "ok" if self._runner else "stopped",
                      {"port": self.port})
