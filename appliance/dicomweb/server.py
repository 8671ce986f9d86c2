"""The box's local DICOMweb read side: QIDO-RS search, WADO-RS instance and series metadata.

``make_app(store)`` returns an aiohttp application meant to be mounted under ``/dicom-web``::

    app.add_subapp("/dicom-web", make_app(store))

Default deny: every request goes through the access guard (:mod:`appliance.trust.guard`), which
decides on what grounds it may read and what it may see; handlers only apply what it decided.
Every answer that carries patient data first queues an audit event naming who (fail closed: when
the audit trail cannot be written, no data is served; see :class:`appliance.audit.AuditWriter`). CORS is
denied unless the origin is on the allow-list given to :func:`make_app`. Answers are never
cacheable by shared caches. Blocking work (SQLite, file opens and reads, gzip) runs in the loop's
default executor; instance bytes go out by sendfile(2) where the transport allows it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import time
from collections import OrderedDict
from typing import Any, Awaitable, BinaryIO, Callable, Collection, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from appliance.audit import AuditUnavailable, AuditWriter
from appliance.logs import new_correlation_id
from appliance.store import BASE, Store, valid_uid
from appliance.trust.guard import Guard, access_of

from . import multipart, qido
from .accept import (
    BadHeader,
    NotAcceptable,
    accepts_gzip,
    accepts_json,
    choose_instance,
    parse_accept,
)

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# Same switch as aiohttp's FileResponse: AIOHTTP_NOSENDFILE=1 forces plain reads.
USE_SENDFILE = not os.environ.get("AIOHTTP_NOSENDFILE")
DICOM_JSON = "application/dicom+json"
STORE_KEY = web.AppKey("dicomweb_store", Store)
AUDIT_KEY = web.AppKey("dicomweb_audit", AuditWriter)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
# Headers a browser may send on a cross-origin DICOMweb request.
_CORS_REQUEST_HEADERS = "Accept, Accept-Encoding, Authorization, Content-Type, KOS-SOPInstanceUID"
_CORS_EXPOSE = "Content-Type, Content-Length, Content-Encoding, Content-Location, Warning"

T = TypeVar("T")
OriginPolicy = Callable[[str], bool]


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n")


def _uid(request: web.Request, name: str, label: str) -> str:
    value = request.match_info[name]
    if not valid_uid(value):
        raise _bad(f"{label} {value[:70]!r} is not a valid UID (digits and dots, at most 64 "
                   "characters)")
    return value


class _MetadataCache:
    """Gzipped series metadata with the base URL filled in, bounded by total bytes.

    Keyed by the stored gzip's trailer (CRC-32 and size of the JSON), so a new version of the
    series misses the cache by construction. Used on the event loop thread only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, str, bytes], bytes] = OrderedDict()
        self._size = 0

    def get(self, key: tuple[str, str, str, bytes]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[str, str, str, bytes], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._items[key] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)


class DicomWeb:
    """Request handlers bound to one store and one policy."""

    def __init__(self, store: Store, *, allow_origin: OriginPolicy, base_url: str | None,
                 max_results: int,
                 metadata_cache_bytes: int, audit: AuditWriter) -> None:
        self.store = store
        self.audit = audit
        self.allow_origin = allow_origin
        self.base_url = base_url.rstrip("/") if base_url else None
        self.max_results = max_results
        self.metadata_cache = _MetadataCache(metadata_cache_bytes)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def base(self, request: web.Request) -> str:
        """The public root of this application, e.g. ``http://127.0.0.1:8080/dicom-web``."""
        if self.base_url:
            return self.base_url
        host = request.host
        if not _HOST.fullmatch(host):
            raise _bad("Host header is not a valid host[:port]")
        studies = str(request.app.router["studies"].url_for())
        return f"{request.scheme}://{host}{studies[:-len('/studies')]}"

    async def _audit(self, request: web.Request, action: str, *, patient_id: str = "",
                     study_uid: str = "", series_uid: str = "", size: int = 0,
                     detail: str = "") -> None:
        """Queue the audit event before any patient data leaves; 503 if the trail is down."""
        access = access_of(request)
        try:
            self.audit.record(access.who, action, "http", patient_id=patient_id,
                              study_uid=study_uid, series_uid=series_uid, bytes=size,
                              status=200, detail=f"{access.ground}: {detail}"[:1000])
            if self.audit.flush_interval <= 0:
                await self.audit.flush()
        except AuditUnavailable:
            raise web.HTTPServiceUnavailable(text="audit trail unavailable\n") from None

    @staticmethod
    def _want_json(request: web.Request) -> None:
        try:
            ok = accepts_json(request.headers.get("Accept"))
        except BadHeader as e:
            raise _bad(f"Accept: {e}") from None
        if not ok:
            raise web.HTTPNotAcceptable(text=f"this resource is offered as {DICOM_JSON} only\n")

    # -- QIDO-RS ---------------------------------------------------------------------------------
    async def search_studies(self, request: web.Request) -> web.StreamResponse:
        return await self._search(request, "study", ())

    async def search_series(self, request: web.Request) -> web.StreamResponse:
        return await self._search(request, "series", (_uid(request, "study", "study"),))

    async def search_instances(self, request: web.Request) -> web.StreamResponse:
        return await self._search(request, "instance", (_uid(request, "study", "study"),
                                                        _uid(request, "series", "series")))

    async def _search(self, request: web.Request, level: qido.Level,
                      scope: tuple[str, ...]) -> web.StreamResponse:
        self._want_json(request)
        try:
            query = qido.parse(level, request.query.items())
        except qido.QueryError as e:
            raise _bad(str(e)) from None
        base = self.base(request)

        visible = access_of(request).visible

        def run() -> qido.Result | None:
            if scope and not self._exists(*scope):
                return None
            return qido.search(self.store.db, query, base, scope, self.max_results,
                               visible=visible)

        result = await self._run(run)
        if result is None:
            raise web.HTTPNotFound(text=("series" if len(scope) == 2 else "study")
                                   + " not found\n")
        # One audit event per patient whose data the answer shows (the study when only one);
        # a search that shows nobody is recorded too (who searched, with which keys).
        if not result.touched:
            await self._audit(request, "dicomweb.search",
                              study_uid=scope[0] if scope else "",
                              series_uid=scope[1] if len(scope) == 2 else "",
                              detail=f"{level} level, no result; keys: {qido.describe(query)}")
        for patient_id, study_uids in sorted(result.touched.items()):
            await self._audit(request, "dicomweb.search", patient_id=patient_id,
                              study_uid=next(iter(study_uids)) if len(study_uids) == 1 else "",
                              series_uid=scope[1] if len(scope) == 2 else "",
                              detail=f"{level} level, {len(study_uids)} studies of this patient "
                                     f"among {len(result.items)} results; "
                                     f"keys: {qido.describe(query)}")
        body = json.dumps(result.items, separators=(",", ":"), ensure_ascii=False).encode()
        resp = web.Response(body=body, content_type=DICOM_JSON, charset="utf-8")
        warnings = []
        if result.truncated:
            warnings.append(f'299 {request.host} "The number of results exceeded the maximum '
                            f'supported by the server ({self.max_results}); use limit and '
                            'offset"')
        if query.fuzzy_requested:
            warnings.append(f'299 {request.host} "fuzzymatching=true is not supported; exact '
                            'and wildcard matching were used"')
        if warnings:
            resp.headers["Warning"] = ", ".join(warnings)
        if len(body) > 4096:
            resp.enable_compression()
        return resp

    def _exists(self, study: str, series: str | None = None) -> bool:
        if series is None:
            return self.store.db.query_one("SELECT 1 FROM studies WHERE study_uid=?",
                                           (study,)) is not None
        return self.store.db.query_one("SELECT 1 FROM series WHERE series_uid=? AND study_uid=?",
                                       (series, study)) is not None

    def _patient_of(self, study: str) -> str:
        row = self.store.db.query_one("SELECT patient_id FROM studies WHERE study_uid=?", (study,))
        return "" if row is None else str(row["patient_id"])

    # -- WADO-RS instance --------------------------------------------------------------------------
    async def retrieve_instance(self, request: web.Request) -> web.StreamResponse:
        study = _uid(request, "study", "study")
        series = _uid(request, "series", "series")
        sop = _uid(request, "sop", "instance")
        accept = request.headers.get("Accept")
        try:
            parse_accept(accept)          # a malformed header is refused before any lookup
        except BadHeader as e:
            raise _bad(f"Accept: {e}") from None
        found = await self._run(self._open_instance, study, series, sop)
        if found is None:
            raise web.HTTPNotFound(text="instance not found\n")
        f, size, stored_syntax, patient_id = found
        try:
            try:
                is_multipart, syntax = choose_instance(accept, stored_syntax)
            except NotAcceptable as e:
                raise web.HTTPNotAcceptable(text=str(e) + "\n") from None
            await self._audit(request, "dicomweb.retrieve", patient_id=patient_id,
                              study_uid=study, series_uid=series, size=size,
                              detail=f"instance {sop}")
            part_type = f"application/dicom; transfer-syntax={syntax}"
            resp = web.StreamResponse()
            if is_multipart:
                boundary = multipart.new_boundary()
                head = multipart.part_header(boundary, part_type, size)
                tail = multipart.part_end() + multipart.closing(boundary)
                resp.headers["Content-Type"] = multipart.content_type(
                    boundary, "application/dicom", syntax)
            else:
                head = tail = b""
                resp.headers["Content-Type"] = part_type
            resp.content_length = len(head) + size + len(tail)
            await resp.prepare(request)
            if head:
                await resp.write(head)
            await self._send_file(request, resp, f, size)
            if tail:
                await resp.write(tail)
            await resp.write_eof()
            return resp
        finally:
            f.close()

    def _open_instance(self, study: str, series: str,
                       sop: str) -> tuple[BinaryIO, int, str, str] | None:
        """(open file, size, stored transfer syntax, patient id), or None. One executor hop."""
        row = self.store.db.query_one(
            "SELECT i.rel_path, i.transfer_syntax, s.patient_id FROM instances i "
            "JOIN studies s ON s.study_uid = i.study_uid "
            "WHERE i.sop_uid=? AND i.series_uid=? AND i.study_uid=?", (sop, series, study))
        if row is None:
            return None
        try:
            f = open(self.store.root / row["rel_path"], "rb")
        except FileNotFoundError:  # deleted between the lookup and the open
            return None
        return f, os.fstat(f.fileno()).st_size, str(row["transfer_syntax"]), str(row["patient_id"])

    async def _send_file(self, request: web.Request, resp: web.StreamResponse, f: BinaryIO,
                         size: int) -> None:
        """The file's bytes: sendfile(2) when the transport allows it (as aiohttp's
        FileResponse does), else 256 KiB reads in the executor. Never the whole file in memory."""
        transport = request.transport
        if USE_SENDFILE and transport is not None:
            try:
                await asyncio.get_running_loop().sendfile(transport, f, 0, size)
                return
            except NotImplementedError:
                f.seek(0)
        while chunk := await self._run(f.read, CHUNK):
            await resp.write(chunk)

    # -- WADO-RS study and series retrieve ---------------------------------------------------------
    async def retrieve_study(self, request: web.Request) -> web.StreamResponse:
        return await self._retrieve_many(request, _uid(request, "study", "study"), None)

    async def retrieve_series(self, request: web.Request) -> web.StreamResponse:
        return await self._retrieve_many(request, _uid(request, "study", "study"),
                                         _uid(request, "series", "series"))

    async def _retrieve_many(self, request: web.Request, study: str,
                             series: str | None) -> web.StreamResponse:
        """Every visible instance of the study (or series), one multipart part each, streamed
        as it is read: the first part leaves before the last file is opened, and memory stays
        bounded by one read buffer whatever the study's size."""
        accept = request.headers.get("Accept")
        try:
            parse_accept(accept)
        except BadHeader as e:
            raise _bad(f"Accept: {e}") from None
        visible = access_of(request).visible
        rows = await self._run(self._instances_of, study, series, visible.instances)
        if not rows:
            raise web.HTTPNotFound(text=("series" if series else "study") + " not found\n")
        syntaxes: dict[str, str] = {}
        for row in rows:
            stored = row["transfer_syntax"]
            if stored not in syntaxes:
                try:
                    is_multipart, syntaxes[stored] = choose_instance(accept, stored)
                except NotAcceptable as e:
                    raise web.HTTPNotAcceptable(text=str(e) + "\n") from None
                if not is_multipart:
                    raise web.HTTPNotAcceptable(text="a study or series is offered as "
                                                'multipart/related; type="application/dicom" '
                                                "only\n")
        total = sum(int(row["size"]) for row in rows)
        await self._audit(request, "dicomweb.retrieve",
                          patient_id=await self._run(self._patient_of, study), study_uid=study,
                          series_uid=series or "", size=total,
                          detail=f"{'series' if series else 'study'}: {len(rows)} instances")
        boundary = multipart.new_boundary()
        one = next(iter(syntaxes.values())) if len(set(syntaxes.values())) == 1 else None
        resp = web.StreamResponse()
        resp.headers["Content-Type"] = multipart.content_type(boundary, "application/dicom", one)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for row in rows:
            f = await self._run(_open_or_none, self.store.root / row["rel_path"])
            if f is None:      # removed since the lookup (IOCM): the others still go
                continue
            try:
                size = os.fstat(f.fileno()).st_size
                await resp.write(multipart.part_header(
                    boundary, f"application/dicom; transfer-syntax="
                    f"{syntaxes[row['transfer_syntax']]}", size))
                while chunk := await self._run(f.read, CHUNK):
                    await resp.write(chunk)
                await resp.write(multipart.part_end())
            finally:
                f.close()
        await resp.write(multipart.closing(boundary))
        await resp.write_eof()
        return resp

    def _instances_of(self, study: str, series: str | None,
                      only: frozenset[str] | None) -> list[Any]:
        sql = ("SELECT i.sop_uid, i.rel_path, i.transfer_syntax, i.size FROM instances i "
               "JOIN series r ON r.series_uid = i.series_uid WHERE i.study_uid = ?")
        params: list[Any] = [study]
        if series is not None:
            sql += " AND i.series_uid = ?"
            params.append(series)
        if only is not None:
            sql += " AND i.sop_uid IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(sorted(only)))
        return self.store.db.query(sql + " ORDER BY r.series_number, r.series_uid, "
                                   "i.instance_number, i.sop_uid", params)

    # -- WADO-RS series metadata ---------------------------------------------------------------------
    async def series_metadata(self, request: web.Request) -> web.StreamResponse:
        study = _uid(request, "study", "study")
        series = _uid(request, "series", "series")
        self._want_json(request)
        base = self.base(request)
        stored = await self._run(self.store.series_metadata_gz, study, series)
        if stored is None:
            raise web.HTTPNotFound(text="series not found\n")
        key = (study, series, base, stored[-8:])   # gzip trailer: CRC-32 + size of the JSON
        data = self.metadata_cache.get(key)
        if data is None:
            data = await self._run(_fill_base, stored, base)
            self.metadata_cache.put(key, data)
        instances = access_of(request).visible.instances
        if instances is not None:
            # A peer sees the instances of its KOS only (the series may hold more).
            data = await self._run(_only_instances, data, instances)
        await self._audit(request, "dicomweb.metadata",
                          patient_id=await self._run(self._patient_of, study), study_uid=study,
                          series_uid=series, size=len(data), detail=f"series {series}")
        headers = {"Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding")):
            headers["Content-Encoding"] = "gzip"
            body = data
        else:
            body = await self._run(gzip.decompress, data)
        return web.Response(body=body, content_type=DICOM_JSON, charset="utf-8", headers=headers)


_SOP_INSTANCE_UID = "00080018"


def _only_instances(data_gz: bytes, instances: frozenset[str]) -> bytes:
    """The gzipped series metadata without the instances not in ``instances``."""
    items = json.loads(gzip.decompress(data_gz))
    kept = [i for i in items
            if (i.get(_SOP_INSTANCE_UID, {}).get("Value") or [""])[0] in instances]
    if len(kept) == len(items):
        return data_gz
    body = json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()
    return gzip.compress(body, compresslevel=6, mtime=0)


def _open_or_none(path: os.PathLike[str]) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _fill_base(stored_gz: bytes, base: str) -> bytes:
    """Replace the store's placeholder with this server's root, gzip'd again (level 6)."""
    escaped = json.dumps(base)[1:-1].encode()   # the base sits inside JSON strings
    body = gzip.decompress(stored_gz).replace(BASE.encode(), escaped)
    return gzip.compress(body, compresslevel=6, mtime=0)


def _cors(allow_origin: OriginPolicy) -> tuple[Any, Callable[..., Awaitable[None]]]:
    """(middleware answering preflights, hook adding no-store/nosniff to every answer and CORS
    headers to allowed origins' answers).

    The hook runs from ``on_response_prepare``, so streamed and error answers get it too.
    """
    @web.middleware
    async def preflight(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        if request.method != "OPTIONS":
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin is None:
            return web.Response(status=204, headers={"Allow": "GET, OPTIONS"})
        if not allow_origin(origin):
            return web.Response(status=403, text="origin not allowed\n")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": _CORS_REQUEST_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        # Patient data: never kept by a shared cache or re-interpreted by a browser.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" or origin is None or not allow_origin(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.headers.add("Vary", "Origin")

    return preflight, add_headers


@web.middleware
async def _context(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Correlation id, timing and a log line per request (no query string: it may name a
    patient)."""
    new_correlation_id("http-")
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        route = request.match_info.route.name or "-"
        log.info("dicomweb request", extra={"route": route, "method": request.method,
                                            "status": status,
                                            "ms": round((time.perf_counter() - started) * 1e3, 1)})


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log without the query string, which may carry a patient's name or ID.

    Pass it to the runner that serves this app: ``web.AppRunner(app, access_log_class=
    AccessLogger)``; aiohttp's default access log writes the full request line.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s", request.method, request.path, response.status,
                         extra={"remote": request.remote, "status": response.status,
                                "bytes": response.body_length, "ms": round(time * 1e3, 1)})


def _origin_policy(cors_origins: Collection[str] | OriginPolicy) -> OriginPolicy:
    if callable(cors_origins):
        return cors_origins
    allowed = frozenset(o.rstrip("/") for o in cors_origins)
    return lambda origin: origin in allowed


def make_app(store: Store, *, guard: Guard, cors_origins: Collection[str] | OriginPolicy = (),
             base_url: str | None = None,
             max_results: int = qido.DEFAULT_MAX_RESULTS,
             metadata_cache_bytes: int = 64 * 1024 * 1024,
             audit_flush_interval: float = 0.1) -> web.Application:
    """The DICOMweb read side over an open ``store``.

    ``cors_origins``: exact origins (``https://viewer.example.org``) or a predicate; default
    none (browsers on other origins are refused). ``base_url``: public root used in
    RetrieveURL and BulkDataURI (default: from the request's scheme, Host and mount point).
    ``guard``: the access guard (:class:`appliance.trust.guard.Guard`); nothing is served
    without it. The audit trail names who it established.
    ``audit_flush_interval``: audit events are committed in batches at this interval (seconds);
    0 commits each before its data is served (one fsync per request).
    """
    allow = _origin_policy(cors_origins)
    writer = AuditWriter(lambda: store.db, flush_interval=audit_flush_interval)
    dw = DicomWeb(store, allow_origin=allow, base_url=base_url,
                  max_results=max_results, metadata_cache_bytes=metadata_cache_bytes,
                  audit=writer)
    guard.audit = writer          # refusals go to the same trail as what is served
    guard.patient_of = dw._patient_of
    preflight, response_headers = _cors(allow)
    app = web.Application(middlewares=[_context, preflight, guard.middleware])
    app.on_response_prepare.append(response_headers)
    app[STORE_KEY] = store
    app[AUDIT_KEY] = writer

    async def flush_audit(_: web.Application) -> None:
        await writer.aclose()

    app.on_cleanup.append(flush_audit)
    r = app.router
    r.add_get("/studies", dw.search_studies, name="studies", allow_head=False)
    r.add_get("/studies/{study}", dw.retrieve_study, name="study", allow_head=False)
    r.add_get("/studies/{study}/series", dw.search_series, name="series", allow_head=False)
    r.add_get("/studies/{study}/series/{series}", dw.retrieve_series, name="series_retrieve",
              allow_head=False)
    r.add_get("/studies/{study}/series/{series}/instances", dw.search_instances,
              name="instances", allow_head=False)
    r.add_get("/studies/{study}/series/{series}/instances/{sop}", dw.retrieve_instance,
              name="instance", allow_head=False)
    r.add_get("/studies/{study}/series/{series}/metadata", dw.series_metadata,
              name="series_metadata", allow_head=False)
    return app
