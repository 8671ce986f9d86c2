"""The daemon's ``tls-gateway`` component keeps its gateway process alive, and never leaves one
behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.gateway.conftest import Reporting, job_of, wait_for
from tests.peers.network import REPO, source_box_config

pytestmark = pytest.mark.integration


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_gateway_is_restarted_and_never_outlives_the_daemon(
        tmp_path: Path, pki, dmp_simulator, pacs) -> None:
    box = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs).start()
    ris = Reporting(dmp_simulator, pacs, tmp_path / "studies", "1840375123491")
    try:
        first = box.gateway_pid()
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (lambda p: p if p not in (None, first) else None)(
            box.gateway_pid()), 20, "a new gateway", box)
        wait_for(lambda: box.health()[0] == 200, 20, "the box to be healthy again", box)
        assert box.health()[1]["components"]["tls-gateway"]["restarts"] == 1
        assert "TLS gateway exited" in box.logs()
        # Egress works again: a report is published through the new gateway.
        study = ris.report(box, "ACC-SV-1")
        wait_for(lambda: job_of(box, study)["state"] == "published", 60, "the publication", box)
        assert len(ris.published(study)) == 1

        # The daemon dies without a word: its gateway notices and stops too.
        box.proc.kill()
        box.proc.wait(10)
        wait_for(lambda: gone(second), 10, "the orphaned gateway to stop")
    finally:
        box.stop()


def test_a_gateway_that_cannot_start_stops_the_daemon_with_its_reason(
        tmp_path: Path, pki, dmp_simulator, pacs) -> None:
    box = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs)
    box.config_path.write_text(box.config_path.read_text().replace("tls = false", "tls = true"))
    with socket.create_server(("127.0.0.1", box.http)):  # someone else has the HTTPS port
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "run", "-c",
                            str(box.config_path)], capture_output=True, text=True, timeout=60,
                           env=box.env, cwd=REPO)
    assert r.returncode == 1
    assert "the TLS gateway cannot start: configuration or certificate error: cannot listen " \
           f"on 127.0.0.1:{box.http}" in r.stderr
