"""A test ANS: serves the signed whitelist and its signer's CRLs over HTTP on 127.0.0.1.

Runs in-process on its own event loop in a background thread (tests), or as
``python -m tests.peers.ans`` (demo). It can swap the served list and inject faults::

    peer = AnsPeer.start(tmp_path)
    peer.publish([domain_for_certificate(pem, "1", "db1.example")])
    peer.fault = "503"          # or "truncated", "garbage", None
    peer.crl_fault = "503"      # the CRLs become unreachable ("redirect-ftp", "huge", "garbage")
    peer.stop()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from appliance.trust.whitelist import Domain

from .pki import AnsPki, make_pki, write_pem
from .signer import signed_list

LIST_PATH = "/liste-blanche/LISTEBLANCHE_DRIM-M_SIGNEE.xml"
FAULTS = (None, "503", "truncated", "garbage")


class AnsPeer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.served: bytes = b""
        self.fault: str | None = None
        self.crl_fault: str | None = None
        self.hits: dict[str, int] = {"list": 0, "crl": 0}
        # Other CAs' CRLs served here too (name -> DER): the test IGC-Santé issuing CAs, as
        # igc-sante.esante.gouv.fr serves them in production.
        self.extra_crls: dict[str, bytes] = {}
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="ans-peer",
                                        daemon=True)
        self.port = 0
        self.pki: AnsPki

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, workdir: str | Path, port: int = 0) -> AnsPeer:
        peer = cls(Path(workdir))
        peer._thread.start()
        asyncio.run_coroutine_threadsafe(peer._serve(port), peer._loop).result(10)
        peer.pki = make_pki(peer.base)
        write_pem(peer.anchor, peer.pki.root)
        return peer

    async def _serve(self, port: int) -> None:
        app = web.Application()
        app.router.add_get(LIST_PATH, self._list)
        app.router.add_get("/crl/{name}.crl", self._crl)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> AnsPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ what it serves

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + LIST_PATH

    @property
    def anchor(self) -> Path:
        """PEM of the test root that anchors the signer (what a box configures)."""
        return self.workdir / "ans-test-root.pem"

    def signed(self, domains: Iterable[Domain], *, generated: dt.datetime | None = None,
               signer: str = "good", method: str = "rsa-sha256") -> bytes:
        """A signed list (not served)."""
        return signed_list(domains, self.pki.signers[signer], generated=generated,
                           method=method)

    def publish(self, domains: Iterable[Domain], *, generated: dt.datetime | None = None,
                signer: str = "good", method: str = "rsa-sha256") -> bytes:
        """Sign and serve a list; returns the bytes served."""
        self.serve(self.signed(domains, generated=generated, signer=signer, method=method))
        return self.served

    def serve(self, data: bytes) -> None:
        """Serve exactly these bytes (forged lists, unsigned copies...)."""
        self.served = data
        self.fault = None

    # ------------------------------------------------------------ handlers

    async def _list(self, _request: web.Request) -> web.Response:
        self.hits["list"] += 1
        if self.fault == "503":
            return web.Response(status=503, text="service unavailable")
        if not self.served:
            return web.Response(status=404, text="no list published")
        body = self.served
        if self.fault == "truncated":
            body = body[: len(body) // 2]
        elif self.fault == "garbage":
            body = os.urandom(2048)
        return web.Response(body=body, content_type="application/xml")

    async def _crl(self, request: web.Request) -> web.Response:
        self.hits["crl"] += 1
        if self.crl_fault == "503":
            return web.Response(status=503, text="service unavailable")
        if self.crl_fault == "redirect-ftp":
            raise web.HTTPFound("ftp://127.0.0.1/crl.crl")
        if self.crl_fault == "huge":
            return web.Response(body=b"\0" * (10 * 1024 * 1024 + 1))
        if self.crl_fault == "garbage":
            return web.Response(body=os.urandom(512))
        name = request.match_info["name"]
        if name in self.extra_crls:
            return web.Response(body=self.extra_crls[name],
                                content_type="application/pkix-crl")
        if name not in ("root", "inter"):
            raise web.HTTPNotFound()
        return web.Response(body=self.pki.crl(name), content_type="application/pkix-crl")
