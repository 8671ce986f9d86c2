"""The ``whitelist`` component: keeps a verified national whitelist in use.

At start it re-verifies the last good list stored in ``<data_dir>/trust/whitelist.xml`` and uses
it if it still verifies, then fetches ``trust.whitelist_url`` (http, https or file) once and then
every ``trust.whitelist_refresh`` seconds (with a little jitter). A newly verified list is written
atomically and swapped in; a refused one is logged with its reason (never its content) and the
last good list stays in use. The box runs without a list (peers are then refused), so the
component is always ready; its status says "ok", "stale", "no list" or "not configured".

Verification (signature, chain, CRLs over plain HTTP) is blocking work: it runs in a worker
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from appliance.component import Health
from appliance.config import Config, TrustConfig
from appliance.keys import certs
from appliance.keys.errors import CertificateRefused

from .crl import CrlSource
from .whitelist import MAX_LIST_BYTES, Revocation, Whitelist, WhitelistRefused, verify

log = logging.getLogger(__name__)

STORED_NAME = "whitelist.xml"


class FetchError(Exception):
    """The list could not be fetched (network, HTTP status, size)."""


def redact(url: str) -> str:
    """``url`` without user:password (for health and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomically(path: Path, data: bytes) -> None:
    """tmp file (0640), fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.fchmod(fd, 0o640)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class WhitelistService:
    name = "whitelist"

    def __init__(self, trust: TrustConfig, data_dir: Path,
                 fallback_anchors: Sequence[Path] = ()) -> None:
        self.trust = trust
        self.dir = Path(data_dir) / "trust"
        self.stored = self.dir / STORED_NAME
        self._anchor_paths = tuple(trust.whitelist_anchors) or tuple(fallback_anchors)
        self._revocation: Revocation = "off" if trust.revocation == "off" else "require"
        self._crls = CrlSource(self.dir / "crl", timeout=trust.fetch_timeout)
        self._anchors: list[x509.Certificate] = []
        self._current: Whitelist | None = None
        self._fetched_at: float | None = None  # when the list in use was last fetched (or stored)
        self.last_fetch_ok: float | None = None
        self.last_error: str | None = None
        self.stored_error: str | None = None  # why the stored list was not used at start
        self.refused = 0
        self.fetch_errors = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config) -> WhitelistService:
        return cls(config.trust, config.box.data_dir, config.hsm.trust_anchors)

    # ------------------------------------------------------------ component

    def current(self) -> Whitelist | None:
        return self._current

    async def start(self) -> None:
        if not self.trust.whitelist_url:
            log.info("whitelist: trust.whitelist_url is empty; no peer will be trusted")
            return
        try:
            self._anchors = certs.load_pem_certificates(self._anchor_paths)
        except CertificateRefused as e:
            self.last_error = f"whitelist anchors: {e}"
        if not self._anchors and self.last_error is None:
            self.last_error = ("no whitelist anchor configured (trust.whitelist_anchors or "
                               "hsm.trust_anchors)")
        await self._load_stored()
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="whitelist-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def health(self) -> Health:
        details: dict[str, Any] = {
            "source": redact(self.trust.whitelist_url) if self.trust.whitelist_url else None,
            "generated": None, "domains": 0,
            "last_fetch_ok": _iso(self.last_fetch_ok), "last_error": self.last_error,
            "stored_error": self.stored_error, "refused": self.refused, "fetch_errors": self.fetch_errors,
        }
        if not self.trust.whitelist_url:
            return Health(True, "not configured", details)
        wl = self._current
        if wl is None:
            return Health(True, "no list", details)
        details.update(generated=f"{wl.generated:%Y-%m-%dT%H:%M:%SZ}", domains=len(wl.domains),
                       revocation=wl.revocation)
        return Health(True, "stale" if self.stale() else "ok", details)

    def stale(self) -> bool:
        wl = self._current
        if wl is None:
            return False
        max_age = self.trust.whitelist_max_age
        now = time.time()
        if self._fetched_at is None or now - self._fetched_at > max_age:
            return True
        return now - wl.generated.timestamp() > max_age

    # ------------------------------------------------------------ work

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.trust.whitelist_refresh * random.uniform(0.9, 1.1))
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the refresh loop
                log.exception("whitelist: refresh failed")

    async def _verify(self, data: bytes, current: Whitelist | None) -> Whitelist:
        if not self._anchors:
            raise WhitelistRefused(self.last_error or "no whitelist anchor configured")
        return await asyncio.to_thread(
            verify, data, self._anchors, signer_cn=self.trust.whitelist_signer_cn,
            signer_ou=self.trust.whitelist_signer_ou, revocation=self._revocation,
            crls=self._crls, current=current)

    async def _load_stored(self) -> None:
        try:
            data = await asyncio.to_thread(self.stored.read_bytes)
            mtime = self.stored.stat().st_mtime
        except FileNotFoundError:
            return
        except OSError as e:
            self.last_error = self.stored_error = f"stored list unreadable: {e}"
            log.warning("whitelist: %s", self.last_error)
            return
        try:
            wl = await self._verify(data, None)
        except WhitelistRefused as e:
            self.last_error = self.stored_error = (
                f"stored list {self.stored} no longer verifies: {e}")
            log.warning("whitelist: %s; not used", self.stored_error)
            return
        self._current, self._fetched_at = wl, mtime
        log.info("whitelist: using the stored list generated %s (%d domains)",
                 f"{wl.generated:%Y-%m-%dT%H:%M:%SZ}", len(wl.domains))

    async def refresh(self) -> bool:
        """Fetch and verify once; True when a verified list is in use afterwards from this fetch."""
        source = redact(self.trust.whitelist_url)
        try:
            data = await self._fetch(self.trust.whitelist_url)
        except FetchError as e:
            self.fetch_errors += 1
            self.last_error = f"fetch of {source} failed: {e}"
            log.warning("whitelist: %s; keeping the list in use", self.last_error)
            return False
        cur = self._current
        try:
            wl = await self._verify(data, cur)
        except WhitelistRefused as e:
            self.refused += 1
            self.last_error = f"list from {source} refused: {e}"
            log.warning("whitelist: %s; keeping the list in use", self.last_error)
            return False
        now = time.time()
        if cur is None or wl.sha256 != cur.sha256:
            try:
                await asyncio.to_thread(write_atomically, self.stored, data)
            except OSError as e:
                log.error("whitelist: cannot store the verified list at %s: %s", self.stored, e)
            log.info("whitelist: new list generated %s, %d domains, revocation %s",
                     f"{wl.generated:%Y-%m-%dT%H:%M:%SZ}", len(wl.domains), wl.revocation)
        self._current = wl
        self._fetched_at = self.last_fetch_ok = now
        self.last_error = None
        return True

    async def _fetch(self, url: str) -> bytes:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file":
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as e:
                raise FetchError(str(e)) from None
            if len(data) > MAX_LIST_BYTES:
                raise FetchError(f"larger than {MAX_LIST_BYTES} bytes")
            return data
        timeout = aiohttp.ClientTimeout(total=self.trust.fetch_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(url, max_redirects=5) as resp:
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > MAX_LIST_BYTES:
                    raise FetchError(f"{resp.content_length} bytes exceeds {MAX_LIST_BYTES}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > MAX_LIST_BYTES:
                        raise FetchError(f"larger than {MAX_LIST_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise FetchError(f"timed out after {self.trust.fetch_timeout:g} s") from None
        except aiohttp.ClientError as e:
            raise FetchError(f"{type(e).__name__}: {e}") from None
