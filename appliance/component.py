"""The one interface every long-lived part of the daemon shares (ARCHITECTURE.md §4).

A component is started and stopped by the supervisor in ``appliance.daemon`` on the daemon's
single asyncio loop. ``health()`` must be cheap and never block: the supervisor polls it for
``GET /healthz``, for systemd READY and for the watchdog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Health:
    """What a component says about itself. ``ready`` False makes the box unhealthy (503)."""

    ready: bool
    status: str = "ok"  # short human word: "ok", "starting", "token absent", ...
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "status": self.status, **self.details}


@runtime_checkable
class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Acquire resources and begin serving. Raise to make the daemon exit with the error."""

    async def stop(self) -> None:
        """Finish or cleanly abort in-flight work, release resources. Must be idempotent."""

    def health(self) -> Health:
        """Current readiness; must not block."""
