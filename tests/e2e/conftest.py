"""A real ``drimbox run`` process on loopback, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from appliance import config
from tests.conftest import dicom_only, free_port, with_ports


@dataclass
class RunningBox:
    proc: subprocess.Popen
    config_path: Path
    data_dir: Path
    http: int
    dicom: int
    hl7: int
    ae_title: str
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def admin(self, path: str, body: dict) -> tuple[int, dict]:
        token = (self.data_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(self.base + "/api/admin" + path, method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def logs(self) -> str:
        return self.log_path.read_text()


def start_box(tmp: Path, pacs_aet: str = "PACS", pacs_port: int = 4242, ae_title: str = "DRIMBOX",
              extra: str = "", modalities: str = "", dicom_port: int | None = None) -> RunningBox:
    tmp.mkdir(parents=True, exist_ok=True)
    ports = {"http": free_port(), "dicom": dicom_port or free_port(), "hl7": free_port()}
    text = (with_ports(dicom_only(config.example(str(tmp / "data"))),
                       {8443: ports["http"], 11112: ports["dicom"], 2575: ports["hl7"],
                        4242: pacs_port})
            .replace('ae_title = "DRIMBOX"', f'ae_title = "{ae_title}"' + modalities)
            .replace('ae_title = "PACS"', f'ae_title = "{pacs_aet}"')) + extra
    if "[dicomweb]" not in text:   # these tests read DICOMweb as a site tool on loopback
        text += '\n[dicomweb]\nopen_to = ["127.0.0.1"]\n'
    cfg = tmp / "box.toml"
    cfg.write_text(text)
    log_path = tmp / "box.log"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg)],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    box = RunningBox(proc, cfg, tmp / "data", ports["http"], ports["dicom"], ports["hl7"],
                     ae_title, log_path)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"box exited {proc.returncode}:\n{box.logs()}")
        try:
            status, _, _ = box.get("/healthz")
            if status == 200:
                return box
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"box not healthy in 60 s:\n{box.logs()}")


def stop_box(box: RunningBox) -> int:
    if box.proc.poll() is None:
        box.proc.send_signal(signal.SIGTERM)
        try:
            return box.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            box.proc.kill()
            raise
    return box.proc.returncode


@pytest.fixture
def running_box(tmp_path: Path) -> Iterator[RunningBox]:
    box = start_box(tmp_path)
    yield box
    stop_box(box)
