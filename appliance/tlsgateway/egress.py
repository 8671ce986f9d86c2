"""Egress: the daemon's plain HTTP in on a Unix socket, mTLS out to a configured upstream.

A request for ``/<upstream>/<path>?<query>`` goes to ``<upstream origin>/<path>?<query>`` with the
organisation's TLS client key (on the token) and the upstream's server certificate verified.
Default deny: a name that is not configured is refused before anything is dialled, and so is any
request target that is not a plain path (absolute-form proxy requests, ``CONNECT``). Redirects are
returned, never followed. ``GET /_ping`` answers the supervisor.

Nothing here logs a path or a query: they may carry a patient identifier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .contract import GATEWAY_OWNED_HEADERS, UPSTREAM_NAME, Upstream
from .forward import end_to_end, refuse, relay

log = logging.getLogger(__name__)


@dataclass
class Route:
    """An upstream and how to reach it; ``unavailable`` says why its TLS context is missing."""

    upstream: Upstream
    ssl_context: ssl.SSLContext | None
    unavailable: str = ""
    session: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.upstream.timeout,
                                            sock_read=self.upstream.timeout)
            # auto_decompress off: the bytes go on as they came, with their Content-Encoding.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context or True, limit=8),
                timeout=timeout, auto_decompress=False)
        return self.session


ROUTES = web.AppKey("routes", dict[str, Route])


def make_app(routes: dict[str, Route], status: dict[str, Any]) -> web.Application:
    """``routes``: the configured upstreams; ``status``: extra fields of the ``/_ping`` answer."""
    app = web.Application()
    app[ROUTES] = routes

    async def ping(_request: web.Request) -> web.Response:
        return web.json_response({**status, "pid": os.getpid(), "upstreams": {
            name: r.unavailable or "ok" for name, r in routes.items()}})

    async def close_sessions(_app: web.Application) -> None:
        for r in routes.values():
            if r.session is not None:
                await r.session.close()

    app.router.add_get("/_ping", ping)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close_sessions)
    return app


async def forward(request: web.Request) -> web.StreamResponse:
    raw = request.raw_path
    _, name, rest = (raw.split("/", 2) + ["", ""])[:3] if raw.startswith("/") else ("", "", "")
    if not name:
        return refuse(400, "bad-target", "egress requests are /<upstream>/<path>")
    route = request.app[ROUTES].get(name) if UPSTREAM_NAME.fullmatch(name) else None
    if route is None:
        log.warning("egress refused: upstream not configured", extra={"upstream": name[:64]})
        return refuse(403, "upstream-not-allowed",
                      f"upstream {name[:64]!r} is not configured; nothing was sent")
    up = route.upstream
    if route.unavailable:
        return refuse(502, "upstream-unavailable", f"upstream {name}: {route.unavailable}")
    target = URL(f"{up.origin}/{rest}", encoded=True)  # as the daemon encoded it
    headers = end_to_end(request.headers, drop=("Host", *GATEWAY_OWNED_HEADERS))
    started = time.perf_counter()
    try:
        async with route.http().request(
                request.method, target, headers=headers, allow_redirects=False,
                data=request.content if request.body_exists else None) as answer:
            resp = await relay(request, answer, up.max_response_bytes)
    except aiohttp.ClientSSLError as e:
        return _failed(name, "upstream-tls", f"TLS with upstream {name} failed: {e}")
    except aiohttp.ClientConnectorError as e:
        return _failed(name, "upstream-unreachable", f"cannot connect to upstream {name}: {e}")
    except asyncio.TimeoutError:
        return _failed(name, "upstream-timeout", f"upstream {name} did not answer within "
                       f"{up.timeout:g} s", status=504)
    except aiohttp.ClientError as e:
        return _failed(name, "upstream-failed",
                       f"upstream {name} failed: {type(e).__name__}: {e}")
    log.debug("egress", extra={"upstream": name, "method": request.method, "status": resp.status,
                               "ms": round((time.perf_counter() - started) * 1000, 1)})
    return resp


def _failed(name: str, reason: str, text: str, status: int = 502) -> web.Response:
    log.warning("egress failed", extra={"upstream": name, "reason": reason, "error": text[:300]})
    return refuse(status, reason, text)
