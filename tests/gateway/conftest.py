"""The TLS gateway (``appliance.tlsgateway``) against real peers: the strict DMP simulator over
mTLS, Orthanc, SoftHSM, ``openssl s_client``, and real ``drimbox run`` daemons.

Shared peers (``pki``, ``dmp_simulator``, ``pacs``) are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance import config as config_mod
from appliance.hl7.ack import parse_ack
from appliance.hl7.mllp import MllpClient
from appliance.keys import softhsm
from appliance.tlsgateway import contract
from tests.peers.network import REPO, SourceBox, source_box_config, study_for  # noqa: F401
from tests.peers.ris import Exam, Patient, Professional, oru


def private_token_store(pki: Any, d: Path) -> Path:
    """A copy of the test PKI's SoftHSM store (same tokens, keys and certificates) with its own
    SOFTHSM2_CONF, so a test may take it away from a daemon without touching anyone else's."""
    line = next(x for x in pki.softhsm_conf.read_text().splitlines()
                if x.startswith("directories.tokendir"))
    shutil.copytree(Path(line.split("=", 1)[1].strip()), d / "tokens")
    return softhsm.write_conf(d / "tokens", d / "softhsm2.conf")


@dataclass
class Gateway:
    """A gateway process started by hand (as the supervisor would) from a box configuration."""

    proc: subprocess.Popen
    plan: contract.Plan

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        return self.proc.returncode

    def session(self) -> aiohttp.ClientSession:
        """An aiohttp session whose every request goes to the egress socket."""
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.plan.egress_socket)))


def start_gateway(config_path: Path, env: dict[str, str] | None = None,
                  timeout: float = 30.0) -> Gateway:
    cfg = config_mod.load(config_path)
    plan = contract.plan(cfg)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.tlsgateway", "-c", str(config_path)],
                            cwd=REPO, env=env or {**os.environ})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        if plan.egress_socket.exists():
            return Gateway(proc, plan)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the gateway did not start")


@pytest.fixture
def source_config(tmp_path: Path, pki: Any, dmp_simulator: Any, pacs: Any) -> SourceBox:
    """A source box's configuration (not started): keys on the test PKI, DMP = the simulator."""
    return source_box_config(tmp_path / "box", pki, dmp_simulator, pacs)


@pytest.fixture
def gateway(source_config: SourceBox) -> Iterator[Gateway]:
    gw = start_gateway(source_config.config_path, source_config.env)
    yield gw
    gw.stop()


class Reporting:
    """A patient with exams: studies in the PACS, reports sent as the RIS would."""

    def __init__(self, sim: Any, pacs: Any, workdir: Path, nir13: str) -> None:
        self.sim, self.pacs, self.workdir = sim, pacs, workdir
        self.patient = Patient(nir13=nir13, ipp=f"IPP-{nir13}")
        self.author = Professional()
        self.xds = f"{self.patient.ins}^^^&{self.patient.ins_oid}&ISO^NH"
        sim.add_patient(self.xds)

    def report(self, box: SourceBox, accession: str) -> str:
        """Put a study in the PACS, send its report; returns the study UID once ACKed AA."""
        import pydicom

        from appliance.generate import synthetic_study

        files = synthetic_study("CT", 2, out_dir=self.workdir / accession, accession=accession,
                                patient_id=self.patient.ipp,
                                patient_name=f"{self.patient.family}^{self.patient.given}")
        self.pacs.upload(files)
        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID

        async def send() -> Any:
            client = await MllpClient.connect("127.0.0.1", box.hl7, timeout=30)
            try:
                return await client.send(oru(self.patient, self.author,
                                             Exam(study_uid, accession)))
            finally:
                await client.close()

        code, _cid, errors = parse_ack(asyncio.run(send()))
        assert code == "AA", errors
        return str(study_uid)

    def published(self, study_uid: str) -> list[dict[str, Any]]:
        return [e for e in self.sim.kos_entries(self.xds)
                if any(study_uid in r for r in e["reference_ids"])]


def job_of(box: SourceBox, study_uid: str) -> dict[str, Any]:
    return max((j for j in box.jobs() if j["study_uid"] == study_uid), key=lambda j: j["id"])


def wait_for(predicate: Any, timeout: float, what: str, box: SourceBox | None = None) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" +
                         (f"\n{box.logs()[-4000:]}" if box else ""))


def maps_provider(pid: int) -> bool:
    """True when process ``pid`` has pkcs11-provider's ``pkcs11.so`` mapped."""
    with open(f"/proc/{pid}/maps") as f:
        return any(line.rstrip().endswith("ossl-modules/pkcs11.so") for line in f)


def egress(plan: contract.Plan, method: str, path: str, **kwargs: Any
           ) -> tuple[int, dict[str, str], bytes]:
    """One request on the egress socket of ``plan``'s gateway, as the daemon sends them."""

    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(plan.egress_socket))) as s:
            async with s.request(method, f"http://{contract.EGRESS_HOST}{path}", **kwargs) as r:
                return r.status, dict(r.headers), await r.read()

    return asyncio.run(go())


def box_plan(box: SourceBox) -> contract.Plan:
    return contract.plan(config_mod.load(box.config_path))
