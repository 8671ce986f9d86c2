"""Forward one HTTP exchange: end-to-end headers only, bodies streamed both ways, never buffered.

Used by both directions of the gateway. aiohttp does the HTTP; this module only decides which
headers cross (RFC 9110 §7.6.1: hop-by-hop headers, and those named by ``Connection``, stay on
their hop) and copies the answer chunk by chunk, so a WADO-RS multipart answer streams.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .contract import GATEWAY_ERROR_HEADER

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
                        "expect"})
CHUNK = 64 * 1024


def end_to_end(headers: CIMultiDictProxy[str] | Mapping[str, str],
               drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones and without ``drop`` (case-insensitive)."""
    connection = headers.getall("Connection", []) if isinstance(headers, CIMultiDictProxy) \
        else [headers.get("Connection", "")]
    named = {t.strip().lower() for v in connection for t in v.split(",") if t.strip()}
    skip = HOP_BY_HOP | named | {d.lower() for d in drop}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in skip:
            out.add(k, v)
    return out


def refuse(status: int, reason: str, text: str) -> web.Response:
    """An answer the gateway makes itself; ``reason`` is a short machine word."""
    return web.Response(status=status, text=text + "\n",
                        headers={GATEWAY_ERROR_HEADER: reason})


async def relay(request: web.Request, upstream: aiohttp.ClientResponse,
                limit: int | None = None) -> web.StreamResponse:
    """Copy ``upstream``'s status, end-to-end headers and body to the client of ``request``.

    With ``limit``, a body announced larger is refused (502) and one that grows larger while
    streaming is cut (the connection is closed: the client sees a truncated answer, not a
    complete wrong one).
    """
    if limit is not None and upstream.content_length is not None and \
            upstream.content_length > limit:
        return refuse(502, "response-too-large",
                      f"the upstream answer ({upstream.content_length} bytes) exceeds the limit "
                      f"of {limit} bytes")
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                              headers=end_to_end(upstream.headers))
    await resp.prepare(request)
    sent = 0
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            sent += len(chunk)
            if limit is not None and sent > limit:
                log.warning("upstream answer cut at the size limit", extra={"limit": limit})
                return _cut(request, resp)
            await resp.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as e:
        # The status line is gone already: all that is left is to not end the body cleanly.
        log.warning("upstream answer broke off", extra={"error": type(e).__name__})
        return _cut(request, resp)
    await resp.write_eof()
    return resp


def _cut(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return resp
