"""``PscLink``, the daemon component: built on the TLS gateway, discovery in the background,
health that never blocks and stays ready when PSC is down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance import config as config_mod
from appliance.box import build
from appliance.psc import PscUnavailable
from appliance.psc.link import PscLink
from appliance.tlsgateway.supervisor import TlsGateway

from .conftest import BOX_CLIENT, PscBox

pytestmark = pytest.mark.integration


def link_on(box: PscBox) -> PscLink:
    # The supervisor object (not started) gives connector() and url() for the gateway process
    # the fixture runs from the same configuration.
    return PscLink(box.config, TlsGateway(box.config, keys=None))


async def wait_discovered(link: PscLink, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if link.discovered:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no discovery: {link.health()}")


async def test_link_discovers_and_checks_tokens(psc: Any, box: PscBox) -> None:
    link = link_on(box)
    assert link.name == "psc"
    await link.start()
    try:
        await wait_discovered(link)
        h = link.health()
        assert (h.ready, h.status) == (True, "ok")
        t = psc.issue_token("radiologue", BOX_CLIENT)
        assert (await link.check_access_token(t["access_token"])).rpps == "899700218896"
    finally:
        await link.stop()


async def test_psc_down_keeps_the_box_ready(psc: Any, box: PscBox) -> None:
    psc.fault("discovery", status=503, count=1000)
    link = link_on(box)
    await link.start()
    try:
        await asyncio.sleep(0.5)
        h = link.health()
        assert h.ready is True and h.status.startswith("discovery not done")
        assert "503" in h.status
        with pytest.raises(PscUnavailable):
            await link.check_access_token("abc.def.ghi")
        psc.clear_faults()
        await wait_discovered(link)
        assert link.health().status == "ok"
    finally:
        await link.stop()


def test_the_box_runs_a_psc_link_when_psc_is_enabled(box: PscBox) -> None:
    daemon = build(config_mod.load(box.config_path))
    names = [c.name for c in daemon.components]
    assert "psc" in names and "tls-gateway" in names
