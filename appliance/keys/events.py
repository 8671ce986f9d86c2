"""Reader and slot events: wake the keys component as soon as a card or reader comes or goes.

Two sources, both optional, both only *hints*: the component re-probes the token on each event and
also polls, so a missed event delays detection by one poll interval at most.
- udev (pyudev): USB CCID smartcard readers plugged in or out (interface class 0x0b).
- PKCS#11 slot flags (:class:`SlotWatcher`): card inserted or removed in a reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CCID_INTERFACE = ":0b"  # USB interface class "smart card" in ID_USB_INTERFACES (":0b0000:")


def is_ccid_reader(properties: dict[str, str]) -> bool:
    """True for a udev USB device that is a CCID smartcard reader."""
    return CCID_INTERFACE in properties.get("ID_USB_INTERFACES", "") or \
        properties.get("DRIVER") == "usb-ccid" or properties.get("ID_SMARTCARD_READER") == "1"


class ReaderMonitor:
    """pyudev netlink monitor of CCID readers, driven by the asyncio loop (no thread)."""

    def __init__(self, on_event: Callable[[str, dict[str, str]], None]) -> None:
        self._on_event = on_event
        self._monitor: Any = None
        self._loop: Any = None

    def start(self, loop: Any) -> bool:
        """Start watching; False when udev is not available (containers, CI): polling only."""
        try:
            import pyudev

            ctx = pyudev.Context()
            mon = pyudev.Monitor.from_netlink(ctx)
            mon.filter_by(subsystem="usb")
            mon.start()
        except Exception as e:  # noqa: BLE001 — no netlink socket, no udev: degrade to polling
            log.info("udev reader monitor unavailable, polling only", extra={"error": str(e)})
            return False
        self._monitor, self._loop = mon, loop
        loop.add_reader(mon.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        assert self._monitor is not None
        while True:
            dev = self._monitor.poll(timeout=0)
            if dev is None:
                return
            props = dict(dev.properties)
            if dev.action in ("add", "remove") and is_ccid_reader(props):
                log.info("smartcard reader event", extra={"action": dev.action})
                self._on_event(dev.action, props)

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._monitor.fileno())
            except (ValueError, OSError):
                pass
        self._monitor = None


@dataclass(frozen=True)
class SlotEvent:
    action: str  # "inserted" or "removed"
    slot: str  # the reader / slot description (no card data)


def slot_states(lib: Any) -> dict[str, bool]:
    """Slot description -> token present, for every slot of the module (readers included)."""
    import pkcs11

    out: dict[str, bool] = {}
    for s in lib.get_slots(token_present=False):
        out[str(s.slot_description).strip()] = bool(s.flags & pkcs11.SlotFlag.TOKEN_PRESENT)
    return out


class SlotWatcher:
    """Card insert/remove seen through PKCS#11 slot flags. Polling, because many modules (OpenSC
    among them) only queue ``C_WaitForSlotEvent`` events for a caller blocked in it, and a blocked
    call cannot be cancelled cleanly at shutdown."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self._last: dict[str, bool] | None = None

    def poll(self) -> list[SlotEvent]:
        import pkcs11.exceptions as p11e

        try:
            now = slot_states(self.lib)
        except p11e.PKCS11Error:
            now = {}
        before, self._last = self._last, now
        if before is None:
            return []
        events = [SlotEvent("inserted", s) for s, p in now.items() if p and not before.get(s)]
        events += [SlotEvent("removed", s) for s, p in before.items() if p and not now.get(s)]
        return events
