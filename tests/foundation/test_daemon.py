"""The daemon as systemd sees it: READY only when healthy, STATUS, STOPPING, exit within 10 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance import config
from appliance.component import Health
from appliance.daemon import Daemon
from tests.conftest import dicom_only, free_port, with_ports


def _write_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    text = with_ports(dicom_only(config.example(str(tmp_path / "data"))),
                      {8443: port, 11112: free_port(), 2575: free_port()})
    f = tmp_path / "box.toml"
    f.write_text(text)
    return f, port


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token
                                 else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_run_notify_health_and_sigterm(tmp_path: Path) -> None:
    cfg, port = _write_config(tmp_path)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg)],
                            env=env, stderr=subprocess.PIPE, text=True)
    messages: list[str] = []
    try:
        deadline = time.time() + 30
        while "READY=1" not in messages and time.time() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                assert proc.poll() is None, proc.stderr.read()
        assert "READY=1" in messages
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body == {"status": "ok"}       # no detail without the token
        assert _get(f"http://127.0.0.1:{port}/healthz", "wrong")[1] == {"status": "ok"}
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        status, body = _get(f"http://127.0.0.1:{port}/healthz", token)
        assert status == 200 and body["status"] == "ok"
        assert body["components"]["store"]["ready"] is True
        assert body["components"]["http"]["ready"] is True
        # The watchdog is pinged from the loop, more often than WATCHDOG_USEC.
        t0 = time.time()
        while "WATCHDOG=1" not in messages and time.time() - t0 < 2:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        assert "WATCHDOG=1" in messages
        assert any(m.startswith("STATUS=ready") for m in messages)
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        assert rc == 0 and time.time() - started < 10
        rest = []
        while True:
            try:
                rest.append(sock.recv(4096).decode())
            except socket.timeout:
                break
        assert "STOPPING=1" in rest
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
        assert any(r["msg"] == "box ready" for r in logs)
        assert all({"ts", "level", "logger", "msg", "cid"} <= set(r) for r in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_config_error_exits_nonzero_naming_the_key(tmp_path: Path) -> None:
    cfg, _ = _write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('retrieve = "c-move"', 'retrieve = "ftp"'))
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "pacs.retrieve" in r.stderr


def test_help_on_every_command() -> None:
    for args in (["--help"], ["run", "--help"], ["config", "--help"], ["config", "check", "--help"],
                 ["generate", "--help"], ["--version"]):
        r = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.strip()


class _Part:
    """A component whose readiness the test controls (the supervisor's own logic is under test)."""

    def __init__(self, name: str, ready: bool = True) -> None:
        self.name, self.ready, self.stopped = name, ready, False

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    def health(self) -> Health:
        return Health(self.ready, "ok" if self.ready else "token absent")


async def test_health_is_503_until_every_component_ready(tmp_path: Path) -> None:
    cfg = config.parse(config.example(str(tmp_path)))
    a, b = _Part("a"), _Part("b", ready=False)
    d = Daemon(cfg, [a, b])
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.1)
    ok, report = d.health()
    assert not ok and report["b"] == {"ready": False, "status": "token absent"}
    b.ready = True
    assert d.health()[0]
    d.request_stop()
    assert await task == 0
    assert a.stopped and b.stopped


async def test_failed_start_stops_what_started(tmp_path: Path) -> None:
    cfg = config.parse(config.example(str(tmp_path)))
    a = _Part("a")

    class Broken(_Part):
        async def start(self) -> None:
            raise RuntimeError("PACS port in use")

    d = Daemon(cfg, [a, Broken("b")])
    with pytest.raises(RuntimeError, match="PACS port in use"):
        await d.run()
    assert a.stopped
