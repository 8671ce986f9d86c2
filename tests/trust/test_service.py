"""The ``whitelist`` component against the test ANS over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path

import pytest

from appliance.config import TrustConfig
from appliance.trust.service import WhitelistService, redact

from .conftest import domains

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _service(peer, data_dir: Path, **kw) -> WhitelistService:
    kw.setdefault("whitelist_refresh", 3600.0)
    trust = TrustConfig(whitelist_url=peer.url, whitelist_anchors=(peer.anchor,),
                        fetch_timeout=5.0, **kw)
    return WhitelistService(trust, data_dir)


async def test_fetches_at_start_and_stores_the_list(ans_peer, tmp_path):
    ans_peer.publish(domains(3), generated=NOW)
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    try:
        wl = svc.current()
        assert wl is not None and len(wl.domains) == 3
        h = svc.health()
        assert h.ready and h.status == "ok"
        assert h.details["domains"] == 3
        assert h.details["generated"] == f"{NOW:%Y-%m-%dT%H:%M:%SZ}"
        assert h.details["last_error"] is None and h.details["last_fetch_ok"]
        assert h.details["source"] == ans_peer.url
        assert h.details["revocation"].startswith("checked")
        stored = tmp_path / "trust" / "whitelist.xml"
        assert stored.read_bytes() == ans_peer.served
        assert stat.S_IMODE(stored.stat().st_mode) == 0o640
    finally:
        await svc.stop()


@pytest.mark.parametrize("bad, reason", [
    ("forged", "signature does not verify"),
    ("unsigned", "not signed"),
    ("older", "is older than the current list"),
    ("garbage", "not a usable XML document"),
    ("truncated", "not a usable XML document"),
    ("503", "HTTP 503"),
    ("revoked", "as revoked"),
])
async def test_keeps_the_last_good_list(ans_peer, tmp_path, bad, reason):
    good = ans_peer.publish(domains(2), generated=NOW)
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    try:
        if bad == "forged":
            ans_peer.serve(good.replace(b"db1.test.example", b"db1.evil.example"))
        elif bad == "unsigned":
            ans_peer.serve(good[:good.index(b"<ds:Signature")] + b"</ListeBlancheDRIM-M>")
        elif bad == "older":
            ans_peer.publish(domains(5), generated=NOW - dt.timedelta(days=1))
        elif bad == "revoked":
            ans_peer.publish(domains(5), generated=NOW + dt.timedelta(seconds=1),
                             signer="revoked")
        else:
            ans_peer.fault = bad
        assert await svc.refresh() is False
        wl = svc.current()
        assert wl is not None and len(wl.domains) == 2
        h = svc.health()
        assert h.ready and h.status == "ok"
        assert reason in h.details["last_error"]
        assert "db1.evil" not in h.details["last_error"]  # the content is never reported
        assert (tmp_path / "trust" / "whitelist.xml").read_bytes() == good
        counted = h.details["fetch_errors"] if bad == "503" else h.details["refused"]
        assert counted == 1
    finally:
        await svc.stop()


async def test_newer_list_replaces_the_current(ans_peer, tmp_path):
    ans_peer.publish(domains(2), generated=NOW - dt.timedelta(minutes=5))
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    try:
        ans_peer.fault = "503"
        await svc.refresh()
        assert "HTTP 503" in svc.health().details["last_error"]
        newer = ans_peer.publish(domains(4), generated=NOW)
        assert await svc.refresh() is True
        assert len(svc.current().domains) == 4
        assert svc.health().details["last_error"] is None
        assert (tmp_path / "trust" / "whitelist.xml").read_bytes() == newer
    finally:
        await svc.stop()


async def test_restart_uses_the_stored_list_while_the_peer_is_down(ans_peer, tmp_path):
    ans_peer.publish(domains(3), generated=NOW)
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    await svc.stop()
    ans_peer.fault = ans_peer.crl_fault = "503"  # list and CRLs away: cached CRLs are used
    again = _service(ans_peer, tmp_path)
    await again.start()
    try:
        wl = again.current()
        assert wl is not None and len(wl.domains) == 3
        h = again.health()
        assert h.ready and h.status == "ok"
        assert "HTTP 503" in h.details["last_error"]
    finally:
        await again.stop()


async def test_stored_list_that_no_longer_verifies_is_not_used(ans_peer, tmp_path):
    stored = tmp_path / "trust" / "whitelist.xml"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(ans_peer.signed(domains(2)).replace(b"db1.test", b"db9.test"))
    ans_peer.fault = "503"
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    try:
        assert svc.current() is None
        h = svc.health()
        assert h.ready and h.status == "no list"
        assert "HTTP 503" in h.details["last_error"]
    finally:
        await svc.stop()


async def test_stale_when_max_age_passes(ans_peer, tmp_path):
    # Generated "now" (a minute ahead, within the clock tolerance): only the fetch age counts.
    ans_peer.publish(domains(1), generated=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    svc = _service(ans_peer, tmp_path, whitelist_max_age=0.5)
    await svc.start()
    try:
        assert svc.health().status == "ok"
        await asyncio.sleep(0.7)
        assert svc.health().status == "stale"
    finally:
        await svc.stop()
    # A list whose generation date is older than max_age is stale even just fetched.
    ans_peer.publish(domains(1), generated=NOW - dt.timedelta(days=2))
    old = _service(ans_peer, tmp_path / "other", whitelist_max_age=86400.0)
    await old.start()
    try:
        assert old.health().status == "stale"
    finally:
        await old.stop()


async def test_background_refresh_and_clean_stop(ans_peer, tmp_path):
    ans_peer.publish(domains(1), generated=NOW - dt.timedelta(minutes=1))
    svc = _service(ans_peer, tmp_path, whitelist_refresh=0.2)
    await svc.start()
    try:
        ans_peer.publish(domains(3), generated=NOW)
        for _ in range(50):
            if len(svc.current().domains) == 3:
                break
            await asyncio.sleep(0.1)
        assert len(svc.current().domains) == 3
    finally:
        await svc.stop()
    assert svc._task is None
    await svc.stop()  # idempotent


async def test_not_configured_and_no_list(ans_peer, tmp_path):
    svc = WhitelistService(TrustConfig(), tmp_path)
    await svc.start()
    assert svc.health().status == "not configured" and svc.health().ready
    await svc.stop()
    ans_peer.fault = "503"
    svc = _service(ans_peer, tmp_path)
    await svc.start()
    try:
        assert svc.current() is None and svc.health().status == "no list"
        assert svc.health().ready
    finally:
        await svc.stop()


async def test_file_url(ans_peer, tmp_path):
    src = tmp_path / "list.xml"
    src.write_bytes(ans_peer.signed(domains(2)))
    trust = TrustConfig(whitelist_url=src.as_uri(), whitelist_anchors=(ans_peer.anchor,),
                        revocation="off")
    svc = WhitelistService(trust, tmp_path / "data")
    await svc.start()
    try:
        assert len(svc.current().domains) == 2
        assert svc.current().revocation == "not checked (revocation off)"
    finally:
        await svc.stop()


def test_redact_drops_credentials():
    assert redact("https://user:secret@ans.example:8443/l.xml?x=1") == (
        "https://ans.example:8443/l.xml?x=1")
    assert redact("http://ans.example/l.xml") == "http://ans.example/l.xml"
