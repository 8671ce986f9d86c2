"""Issue #3, last point: the box recovers when the token disappears and comes back, without a
restart, while it does TLS with the token's keys (through the TLS gateway).

A real ``drimbox run`` (source role) with its keys on a private copy of the SoftHSM store
publishes to the strict DMP simulator over mTLS. The store is moved away and back, as a card is
pulled and put back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    Reporting,
    job_of,
    maps_provider,
    private_token_store,
    wait_for,
)
from tests.peers.network import source_box_config

pytestmark = pytest.mark.integration


def test_token_away_and_back_under_a_running_daemon(tmp_path: Path, pki, dmp_simulator,
                                                    pacs) -> None:
    conf = private_token_store(pki, tmp_path / "hsm")
    box = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs)
    box.env["SOFTHSM2_CONF"] = str(conf)
    ris = Reporting(dmp_simulator, pacs, tmp_path / "studies", "1840375123490")
    tokens, away = tmp_path / "hsm" / "tokens", tmp_path / "hsm" / "away"
    box.start()
    try:
        daemon_pid, first_gateway = box.proc.pid, box.gateway_pid()
        assert first_gateway and first_gateway != daemon_pid
        # TLS with token keys happens in the gateway only; the daemon never loads the provider
        # (that is what lets it re-initialise its PKCS#11 module below).
        assert maps_provider(first_gateway) and not maps_provider(daemon_pid)

        before = ris.report(box, "ACC-TR-1")
        wait_for(lambda: job_of(box, before)["state"] == "published", 60, "first publication",
                 box)
        assert len(ris.published(before)) == 1

        # The token goes away: reported, and a publication waits for it (nothing lost).
        away.mkdir()
        for store in tokens.iterdir():
            shutil.move(store, away / store.name)
        health = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(box.health()), 20,
                          "the box to report the token absent", box)[1]
        assert health["components"]["keys"]["ready"] is False
        assert health["components"]["keys"]["status"] == "token absent"
        during = ris.report(box, "ACC-TR-2")
        job = wait_for(lambda: (lambda j: j if j["state"] == "built" and j["attempts"] >= 1
                                else None)(job_of(box, during)), 60, "a failed attempt", box)
        assert "DMP unavailable" in job["reason"] and "token" in job["reason"]
        assert ris.published(during) == []
        # The token is back: ready again within seconds, by itself, with a new gateway process
        # (a fresh pkcs11-provider) and the same daemon.
        for store in away.iterdir():
            shutil.move(store, tokens / store.name)
        wait_for(lambda: box.health()[0] == 200, 30, "the box to be healthy again", box)
        assert box.proc.poll() is None and box.proc.pid == daemon_pid
        second_gateway = box.gateway_pid()
        assert second_gateway not in (None, first_gateway)
        assert "token back: restarting the TLS gateway" in box.logs()

        # The queued publication goes out through the new gateway's mTLS.
        wait_for(lambda: job_of(box, during)["state"] == "published", 90,
                 "the queued publication", box)
        assert len(ris.published(during)) == 1
        assert len(ris.published(before)) == 1
    finally:
        if away.exists():
            for store in away.iterdir():
                shutil.move(store, tokens / store.name)
        box.stop()
