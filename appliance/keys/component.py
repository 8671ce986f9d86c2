"""The daemon's "keys" component: owns the token, watches it, reports its health.

"token absent" (card pulled, HSM unreachable) makes the component not ready; it becomes ready again
by itself when the token is back. Certificates nearing expiry are reported (warning at 30 days,
error at 7); an expired certificate makes the component not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from appliance.component import Health

from . import certs, events
from .errors import KeysError
from .token import Token

log = logging.getLogger(__name__)


class KeysComponent:
    name = "keys"

    def __init__(self, hsm_cfg: Any, cert_dir: str | Path | None = None,
                 poll_interval: float = 5.0, token: Token | None = None) -> None:
        self.hsm_cfg = hsm_cfg
        self.token = token or Token.from_config(hsm_cfg, cert_dir=cert_dir)
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._monitor = events.ReaderMonitor(lambda action, props: self._wake.set())
        self._cert_health: dict[str, certs.Expiry] = {}
        self._running = False
        self._slots: events.SlotWatcher | None = None
        self.reader_events: list[events.SlotEvent] = []  # most recent last, bounded

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        await loop.run_in_executor(None, self._check)
        self._monitor.start(loop)
        self._task = asyncio.create_task(self._watch(), name="keys-watch")

    async def stop(self) -> None:
        self._running = False
        self._monitor.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self.token.close)

    async def sign(self, key_label: str, data: bytes, algorithm: str = "rsa-sha256") -> bytes:
        """:meth:`Token.sign` off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.token.sign, key_label, data, algorithm)

    def wake(self) -> None:
        """Re-check now (reader or slot event)."""
        self._wake.set()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await loop.run_in_executor(None, self._check)
            except Exception:  # noqa: BLE001 — the watcher must outlive any one bad probe
                log.exception("token check failed")

    def _check(self) -> None:
        self._watch_slots()
        was = self.token.present
        ok = self.token.probe()
        if ok != was:
            (log.info if ok else log.error)(
                "token back" if ok else "token absent",
                extra={"token": self.token.token_label, "status": self.token.health().status})
        if ok:
            self._check_certs()

    def _watch_slots(self) -> None:
        lib = self.token._lib
        if lib is None:
            return
        if self._slots is None:
            self._slots = events.SlotWatcher(lib)
        with self.token._lock:  # python-pkcs11 initialises without locking flags: serialise
            found = self._slots.poll()
        for ev in found:
            log.info("card event", extra={"action": ev.action, "slot": ev.slot})
            self.reader_events = (self.reader_events + [ev])[-20:]

    def _check_certs(self) -> None:
        out: dict[str, certs.Expiry] = {}
        for label in (self.hsm_cfg.auth_key_label, self.hsm_cfg.sign_key_label):
            try:
                out[label] = certs.expiry(self.token.certificate(label))
            except KeysError:
                continue  # no certificate imported yet: reported by `drimbox hsm status`
        for label, e in out.items():
            if e.level in ("error", "expired") and self._cert_health.get(label, e).level != e.level:
                log.error("certificate expiry", extra={"label": label, "level": e.level,
                                                       "days_left": round(e.days_left, 1)})
            elif e.level == "warning" and label not in self._cert_health:
                log.warning("certificate expiry", extra={"label": label,
                                                         "days_left": round(e.days_left, 1)})
        self._cert_health = out

    def health(self) -> Health:
        h = self.token.health()
        if not h.ready:
            return h
        worst = "ok"
        rank = ["ok", "warning", "error", "expired"]
        details: dict[str, Any] = dict(h.details)
        for label, e in self._cert_health.items():
            details[f"cert_{label}_days_left"] = int(e.days_left)
            if rank.index(e.level) > rank.index(worst):
                worst = e.level
        if worst == "expired":
            return Health(False, "certificate expired", details)
        if worst in ("warning", "error"):
            details["level"] = worst
            return Health(True, "certificate expiring", details)
        return Health(True, "ok", details)
