"""The asyncio supervisor: starts the enabled components, tells systemd, stops them cleanly.

Start order is the list order; stop order is the reverse. READY=1 is sent once every component is
healthy; the watchdog is pinged from the loop itself, so a blocked loop means a restart. SIGTERM and
SIGINT begin an orderly stop bounded by ``box.shutdown_timeout`` (under systemd's 10 s default).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any, Callable

from appliance.component import Component, Health
from appliance.config import Config

log = logging.getLogger(__name__)


def _notifier() -> Callable[[str], None]:
    if not os.environ.get("NOTIFY_SOCKET"):
        return lambda _msg: None
    try:
        from systemd import daemon as sd  # type: ignore[import-not-found]
    except ImportError:  # systemd-python absent: notifications are best effort
        log.warning("NOTIFY_SOCKET is set but systemd-python is missing; no sd_notify")
        return lambda _msg: None
    return lambda msg: sd.notify(msg)


class Daemon:
    def __init__(self, config: Config, components: list[Component]) -> None:
        self.config = config
        self.components = components
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._started: list[Component] = []
        self.notify = _notifier()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(all ready, per-component JSON) for /healthz."""
        report: dict[str, Any] = {}
        ok = True
        for c in self.components:
            try:
                h = c.health() if c in self._started else Health(False, "not started")
            except Exception as e:  # a broken health() is itself unhealthy
                h = Health(False, f"health check failed: {type(e).__name__}")
            report[c.name] = h.as_json()
            ok = ok and h.ready
        return ok, report

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not in the main thread (tests)
                pass
        try:
            for c in self.components:
                self.notify(f"STATUS=starting {c.name}")
                log.info("starting component", extra={"component": c.name})
                await c.start()
                self._started.append(c)
        except Exception as e:
            log.error("component failed to start: %s", e,
                      extra={"component": c.name, "error": type(e).__name__})
            await self._stop_all()
            raise
        watchdog = asyncio.create_task(self._watch())
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()
            self.notify("STOPPING=1")
            await self._stop_all()
        return 0

    async def _watch(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = min(usec / 2e6, 1.0) if usec else 1.0
        ready_sent = False
        last_status = ""
        while True:
            ok, report = self.health()
            if ok and not ready_sent:
                self.notify("READY=1")
                ready_sent = True
                log.info("box ready", extra={"components": ",".join(report)})
            status = "ready" if ok else "degraded: " + ", ".join(
                f"{k} {v['status']}" for k, v in report.items() if not v["ready"])
            if status != last_status:
                self.notify(f"STATUS={status}")
                if ready_sent and not ok:
                    log.warning("box degraded", extra={"status": status})
                last_status = status
            if usec:
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _stop_all(self) -> None:
        deadline = time.monotonic() + self.config.box.shutdown_timeout
        for c in reversed(self._started):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(c.stop(), timeout=remaining)
                log.info("stopped component", extra={"component": c.name})
            except asyncio.TimeoutError:
                log.error("component did not stop in time", extra={"component": c.name})
            except Exception:
                log.exception("component failed to stop", extra={"component": c.name})
        self._started.clear()
