"""Reader and slot events: wake the keys component as soon as a card or reader comes or goes.

Two sources, both optional, both only *hints*: the component re-probes the token on each event and
also polls, so a missed event delays detection by one poll interval at most.
- udev (pyudev): USB CCID smartcard readers plugged in or out (interface class 0x0b).
- PKCS#11 slot events (``C_WaitForSlotEvent`` non-blocking): card inserted or removed in a reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def poll_slot_event(lib: Any) -> Any | None:
    """A pending PKCS#11 slot event (the slot), or None. Never blocks; None when unsupported."""
    import pkcs11.exceptions as p11e

    try:
        return lib.wait_for_slot_event(blocking=False)
    except (p11e.NoEvent, p11e.FunctionNotSupported, p11e.PKCS11Error):
        return None
