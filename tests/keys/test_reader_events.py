"""Card insert / remove with the virtual reader: pcscd + vpcd (reader driver) + vicc (card),
seen through OpenSC's PKCS#11 module by the keys component."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.keys import KeysComponent, Token, softhsm

OPENSC = next((p for p in ("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
                           "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
                           "/usr/lib/opensc-pkcs11.so") if Path(p).is_file()), None)
VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
VICC_LIB = "/usr/lib/python3/site-packages/virtualsmartcard"  # where Debian 12 puts it
SHIM = Path(__file__).parent / "vicc_shim"


def _missing() -> str | None:
    if OPENSC is None:
        return "OpenSC PKCS#11 module not installed (Debian package opensc)"
    if not shutil.which("pcscd") or not VPCD_CONF.is_file():
        return "pcscd / vsmartcard-vpcd not installed"
    if not shutil.which("vicc") or not Path("/usr/bin/python3").is_file():
        return "vsmartcard-vpicc not installed"
    r = subprocess.run(["/usr/bin/python3", "-c", "import Cryptodome"], capture_output=True)
    if r.returncode != 0:
        return "python3-pycryptodome not installed (vicc needs it on Debian 12)"
    return None


@pytest.fixture(scope="module")
def pcscd() -> Iterator[None]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    proc = None
    alive = subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True).returncode == 0
    if not alive:
        # A socket file left by a pcscd that was killed would make us skip the start.
        Path("/run/pcscd/pcscd.comm").unlink(missing_ok=True)
    if not Path("/run/pcscd/pcscd.comm").exists():
        if os.geteuid() != 0:
            pytest.skip("pcscd is not running and starting it needs root")
        proc = subprocess.Popen(["pcscd", "--foreground"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not Path("/run/pcscd/pcscd.comm").exists() and time.monotonic() < end:
            time.sleep(0.1)
    yield
    if proc is not None:
        proc.terminate()
        proc.wait(10)


def _vicc() -> subprocess.Popen[bytes]:
    # vpcd's first reader listens on 127.0.0.1:35963 (/etc/reader.conf.d/vpcd): a fixed port set
    # by the driver's configuration, not ours to choose.
    return subprocess.Popen(["/usr/bin/python3", "/usr/bin/vicc", "-t", "iso7816",
                             "-H", "127.0.0.1", "-P", "35963"],
                            env={"PATH": os.environ.get("PATH", ""),
                                 "PYTHONPATH": f"{SHIM}:{VICC_LIB}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _until(cond, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


async def test_card_insert_and_remove_with_unrecognised_card(pcscd, tmp_path: Path) -> None:
    """The component sees the virtual card arrive and leave in the virtual reader. A card that
    is not the box's token (an ISO 7816 card with no PKCS#15 application) leaves it not ready
    with "token absent". (OpenSC probes every card driver on an unknown card: ~12 s.)"""
    pin = tmp_path / "pin"
    softhsm.write_secret(pin, "1234")
    tok = Token(OPENSC, "DRIMBOX CPS", pin)
    from appliance.config import HsmConfig

    cfg = HsmConfig(module=Path(OPENSC), token_label="DRIMBOX CPS", pin_file=pin,
                    auth_key_label="auth", sign_key_label="sign")
    comp = KeysComponent(cfg, poll_interval=0.3, token=tok)
    await comp.start()
    card = _vicc()
    try:
        for _ in range(150):  # OpenSC probes every card driver on an unknown card: ~12 s idle
            await asyncio.sleep(0.3)
            if any(e.action == "inserted" for e in comp.reader_events):
                break
        inserted = [e for e in comp.reader_events if e.action == "inserted"]
        assert inserted and "Virtual PCD" in inserted[0].slot
        h = comp.health()
        assert h.ready is False and h.status == "token absent"
    finally:
        card.terminate()
        card.wait(10)
    try:
        for _ in range(150):
            await asyncio.sleep(0.3)
            if any(e.action == "removed" for e in comp.reader_events):
                break
        removed = [e for e in comp.reader_events if e.action == "removed"]
        assert removed and removed[0].slot == inserted[0].slot
        assert comp.health().ready is False
    finally:
        await comp.stop()
