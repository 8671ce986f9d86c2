"""The demo network's moving parts, shared by the demo and the tests: the DMP simulator as a
separate process, a source box as a real ``drimbox run``, and PACS studies matching a report."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from appliance import config
from appliance.generate import synthetic_study
from tests.conftest import free_port, with_ports
from tests.peers.orthanc import Orthanc

REPO = Path(__file__).resolve().parents[2]


def start_simulator(pki: Any, workdir: Path) -> "Simulator":
    """The strict DMP simulator in its own process, its server certificate from the test PKI."""
    from tests.dmp.pki import box_client_context, simulator_certs

    certs = simulator_certs(pki, workdir)
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.dmp", "--port", "0",
                             "--cert", str(certs.cert), "--key", str(certs.key),
                             "--client-ca", str(certs.client_ca)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        raise RuntimeError("the DMP simulator did not start")
    info = json.loads(line)
    # Harnesses talk to the control endpoints as the test PKI's second structure.
    return Simulator(proc, info["url"], info["port"], box_client_context(pki, 1))


@dataclass
class Simulator:
    proc: subprocess.Popen
    url: str
    port: int
    ctx: ssl.SSLContext

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if raw and r.headers.get_content_type() == "application/json" \
                else raw

    def entries(self) -> list[dict[str, Any]]:
        return self._req("GET", "/_inspect/entries")

    def kos_entries(self, patient: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.entries() if not e["is_signature"]
                and (patient is None or e["patient_id"] == patient)]

    def document(self, unique_id: str) -> bytes:
        return self._req("GET", f"/_inspect/documents/{unique_id}")

    def add_patient(self, patient_id: str) -> None:
        self._req("POST", "/_control/patients", {"patient_id": patient_id})

    def fault(self, **fault: Any) -> None:
        self._req("POST", "/_control/faults", fault)

    def clear_faults(self) -> None:
        self._req("DELETE", "/_control/faults")

    def reset(self) -> None:
        self._req("POST", "/_control/reset")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


@dataclass
class SourceBox:
    proc: subprocess.Popen | None
    config_path: Path
    data_dir: Path
    http: int
    hl7: int
    log_path: Path
    env: dict[str, str]

    tls_context: ssl.SSLContext | None = None  # set when the box serves HTTPS

    @property
    def base(self) -> str:
        scheme = "https" if self.tls_context else "http"
        return f"{scheme}://127.0.0.1:{self.http}"

    def _open(self, req: Any, timeout: float) -> Any:
        return urllib.request.urlopen(req, timeout=timeout, context=self.tls_context)

    def start(self) -> "SourceBox":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "-c", str(self.config_path)],
            stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"box exited {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                with self._open(f"{self.base}/healthz", 2):
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"box not healthy in 60 s:\n{self.logs()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        rc = self.proc.wait(15)
        return rc

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /healthz``: (HTTP status, body), 503 included."""
        token = (self.data_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(f"{self.base}/healthz",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with self._open(req, 10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def gateway_pid(self) -> int | None:
        """The pid of the box's TLS gateway process, as its supervisor reports it."""
        return self.health()[1]["components"]["tls-gateway"]["pid"]

    def admin(self, method: str, path: str) -> Any:
        token = (self.data_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(f"{self.base}/api/admin{path}",
                                     method=method, headers={"Authorization": f"Bearer {token}"},
                                     data=b"" if method == "POST" else None)
        try:
            with self._open(req, 30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def jobs(self) -> list[dict[str, Any]]:
        return self.admin("GET", "/reports?limit=1000")[1]["reports"]

    def wait_jobs(self, predicate, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            time.sleep(0.3)
        raise AssertionError(f"jobs never reached the expected state: {self.jobs()}\n"
                             f"{self.logs()[-3000:]}")


def with_test_keys(config_text: str, pki: Any, dmp_url: str, dmp_timeout: float = 10.0) -> str:
    """The example configuration with its keys on the test PKI's first SoftHSM token and its
    DMP at ``dmp_url`` (the simulator), trusting the test PKI."""
    hsm = pki.hsm_config(0)
    return (config_text
            .replace('module = "/usr/lib/softhsm/libsofthsm2.so"', f'module = "{hsm.module}"')
            .replace('token_label = "drimbox"', f'token_label = "{hsm.token_label}"')
            .replace('pin_file = "/run/credentials/drimbox.service/hsm-pin"',
                     f'pin_file = "{hsm.pin_file}"\ntrust_anchors = ["{pki.bundle}"]')
            .replace('url = "https://dmp.example.org/si-dmp-server/v2/services"',
                     f'url = "{dmp_url}"\ntimeout = {dmp_timeout}')
            .replace('ca_file = "/etc/drimbox/dmp-ca.pem"', f'ca_file = "{pki.bundle}"'))


def source_box_config(tmp: Path, pki: Any, sim: Simulator, pacs: Orthanc, extra: str = "",
                      public_url: str | None = None) -> SourceBox:
    """A source box (roles.source) with its keys on the test PKI's first SoftHSM token, linked to
    ``pacs`` and ``sim``. ``pacs.box_dicom_port`` is the port the PACS knows the box on."""
    http, hl7 = free_port(), free_port()
    public_url = public_url or "https://db1.test.mesimagesmedicales.fr:8443"
    public_url = public_url.replace("{http}", str(http))
    ports = {8443: http, 2575: hl7, 11112: pacs.box_dicom_port,  # type: ignore[attr-defined]
             4242: pacs.dicom_port}
    text = (with_test_keys(with_ports(config.example(str(tmp / "data")), ports), pki, sim.url)
            .replace("https://db1.example.org:8443", public_url)
            .replace('ae_title = "PACS"', f'ae_title = "{pacs.aet}"')
            .replace("consumer = true", "consumer = false")) + extra
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "box.toml"
    cfg.write_text(text)
    env = {**os.environ, "SOFTHSM2_CONF": str(pki.softhsm_conf), "PYTHONUNBUFFERED": "1"}
    return SourceBox(None, cfg, tmp / "data", http, hl7, tmp / "box.log", env)


def with_tls(box: SourceBox, pki: Any) -> SourceBox:
    """The box serving HTTPS through its TLS gateway (server key on its token)."""
    box.config_path.write_text(box.config_path.read_text().replace("tls = false", "tls = true"))
    ctx = ssl.create_default_context(cafile=str(pki.bundle))
    ctx.check_hostname = False  # the test certificate names "localhost"; we dial 127.0.0.1
    box.tls_context = ctx
    return box


def study_for(report: Any, out: Path, slices: int = 3, series: int = 1) -> list[Path]:
    """A study in the PACS that matches a report: its study UID, accession and IPP."""
    cda = report.cda_report
    return synthetic_study("CT", slices, out_dir=out, series=series, study_uid=cda.study_uid,
                           accession=cda.accession.extension, patient_id=report.ipp,
                           patient_name=f"{report.birth_family}^{report.given}")


def sop_uids(files: list[Path]) -> set[str]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
