"""The guard's limits for peer boxes (concurrent requests per peer, request timeout) and the HTTP
side's (idle and slow request heads, body size).

The peer path runs on real parts: a whitelist signed by the test ANS and verified, the Pro Santé
Connect simulator reached over mTLS (with a software test key: the gateway's token path is covered
by test_peer_access.py), and a KOS stored as the publisher stores it. The client certificate
reaches the guard as the TLS gateway passes it (the header the gateway owns).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance import config
from appliance.audit import AuditWriter
from appliance.keys.certs import load_pem_certificates
from appliance.store import Store
from appliance.trust.guard import Guard
from appliance.trust.published import PublishedKos
from appliance.web.server import HttpServer, make_app
from tests.consumer.conftest import build_manifest
from tests.peers import trustkit

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def parts(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    p = trustkit.start(pki, tmp_path_factory.mktemp("limits"))
    yield p
    p.psc.stop()


@pytest.fixture
async def box(parts: trustkit.Parts, pki: Any, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = Store(config.parse(config.example(str(tmp_path / "data"))), synchronous="NORMAL")
    store.open()
    built, study, _ = build_manifest("CT", "ACC-LIM")
    trustkit.store_publication(store.db, study, built.data, built.sop_instance_uid)
    checker = parts.checker()
    release = asyncio.Event()
    guard = Guard(published=PublishedKos(store.db), anchors=lambda: load_pem_certificates(
        [pki.bundle]), whitelist=lambda: parts.whitelist, tokens=lambda: checker,
        audience=trustkit.BOX_CLIENT, max_per_peer=1, request_timeout=1.0)
    guard.audit = AuditWriter(store.db, flush_interval=0)

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="served")

    sub = web.Application(middlewares=[guard.middleware])
    sub.router.add_get("/studies/{study}", slow)
    app = make_app(lambda: (True, {}), {"/dicom-web": sub}, behind_gateway=True)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    headers = {"X-Drimbox-Client-Cert": parts.peer_cert_header,
               "Authorization": f"Bearer {parts.token()}",
               "KOS-SOPInstanceUID": built.sop_instance_uid}
    yield {"client": client, "url": f"/dicom-web/studies/{study}", "headers": headers,
           "release": release, "store": store, "audit": guard.audit}
    release.set()
    await client.close()
    await checker.close()
    store.close()


async def test_one_peer_gets_429_beyond_its_concurrent_limit(box: dict[str, Any]) -> None:
    c, url, h = box["client"], box["url"], box["headers"]
    first = asyncio.create_task(c.get(url, headers=h))
    await asyncio.sleep(0.3)                       # the first is inside the handler
    r = await c.get(url, headers=h)
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert "concurrent" in (await r.json())["reason"]
    box["release"].set()
    r1 = await first
    assert r1.status == 200 and await r1.text() == "served"
    # Once the first is done, the peer may ask again.
    assert (await c.get(url, headers=h)).status == 200
    await box["audit"].flush()
    rows = box["store"].db.query("SELECT status, reason, professional FROM audit_events")
    assert [(r["status"], r["professional"]) for r in rows] == [(429, "899700218896")]


async def test_a_request_that_runs_too_long_is_cut(box: dict[str, Any]) -> None:
    started = time.monotonic()
    r = await box["client"].get(box["url"], headers=box["headers"])
    assert r.status == 503 and (await r.json())["reason"] == "request timed out"
    assert time.monotonic() - started < 5
    # The slot is given back.
    box["release"].set()
    assert (await box["client"].get(box["url"], headers=box["headers"])).status == 200


async def test_http_cuts_idle_and_slow_clients_and_large_bodies(tmp_path: Path) -> None:
    text = config.example(str(tmp_path / "data")).replace(
        "tls = false", "tls = false\nkeepalive_timeout = 1.0\nmax_body_bytes = 1000").replace(
        "port = 8443", "port = 0")
    cfg = config.parse(text)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    sub = web.Application()
    sub.router.add_post("/echo", echo)
    server = HttpServer(cfg, make_app(lambda: (True, {}), {"/t": sub},
                                      max_body_bytes=cfg.http.max_body_bytes))
    await server.start()
    try:
        loop = asyncio.get_running_loop()

        def closed_after(send: bytes) -> float:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                t0 = time.monotonic()
                s.sendall(send)
                while s.recv(4096):   # drain until the server closes
                    pass
                return time.monotonic() - t0

        silent = await loop.run_in_executor(None, closed_after, b"")
        slow = await loop.run_in_executor(None, closed_after, b"GET /healthz HTTP/1.1\r\nHo")
        assert silent < 4 and slow < 4          # keepalive_timeout = 1 s, not an hour
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}/t/echo"
            async with http.post(base, data=b"x" * 999) as r:
                assert r.status == 200 and await r.text() == "999"
            async with http.post(base, data=b"x" * 5000) as r:
                assert r.status == 413
    finally:
        await server.stop()
