"""udev reader detection rules and the monitor's graceful start where udev is missing."""

from __future__ import annotations

import asyncio

from appliance.keys import events


def test_ccid_reader_is_recognised_from_udev_properties() -> None:
    # properties as udev reports them for a USB CCID reader (e.g. an Omnikey 3121)
    reader = {"SUBSYSTEM": "usb", "DEVTYPE": "usb_device", "ID_VENDOR_ID": "076b",
              "ID_USB_INTERFACES": ":0b0000:"}
    composite = {"SUBSYSTEM": "usb", "ID_USB_INTERFACES": ":030101:0b0000:"}  # keyboard+reader
    keyboard = {"SUBSYSTEM": "usb", "ID_USB_INTERFACES": ":030101:030000:"}
    assert events.is_ccid_reader(reader) and events.is_ccid_reader(composite)
    assert not events.is_ccid_reader(keyboard) and not events.is_ccid_reader({})


async def test_reader_monitor_starts_or_degrades_to_polling() -> None:
    seen: list[str] = []
    mon = events.ReaderMonitor(lambda action, props: seen.append(action))
    started = mon.start(asyncio.get_running_loop())
    assert started in (True, False)  # False where there is no udev netlink (containers)
    await asyncio.sleep(0.05)
    mon.stop()
    mon.stop()  # idempotent
    assert seen == []  # no reader was plugged during the test
