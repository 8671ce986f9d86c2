"""KOS test fixtures: request factories and the two independent checkers (dciodvfy, dsrdump)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, time
from typing import Any

import pytest

from appliance.dicom.kos import Instance, KosRequest, Patient, Study
from appliance.dicom.uids import new_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS = {"CT": CT_IMAGE, "MR": MR_IMAGE}
INS_TEST_OID = "1.2.250.1.213.1.4.10"
PUBLIC_URL = "https://db1.example.org:8443"


@dataclass(frozen=True)
class Verdict:
    errors: list[str]
    warnings: list[str]
    output: str


def _run_on_bytes(cmd: list[str], data: bytes) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        return subprocess.run([*cmd, f.name], check=False, capture_output=True, text=True, errors="replace",
                              timeout=120)


@pytest.fixture(scope="session")
def dciodvfy() -> Callable[[bytes], Verdict]:
    """Run dicom3tools' IOD validator on DICOM bytes; errors are its 'Error - …' lines."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools")

    def check(data: bytes) -> Verdict:
        r = _run_on_bytes(["dciodvfy"], data)
        lines = (r.stdout + r.stderr).splitlines()
        return Verdict([ln for ln in lines if ln.startswith("Error")],
                       [ln for ln in lines if ln.startswith("Warning")], r.stdout + r.stderr)

    return check


@pytest.fixture(scope="session")
def dsrdump() -> Callable[[bytes], subprocess.CompletedProcess[str]]:
    """DCMTK's structured-report reader: a second, independent parser of the SR tree."""
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump not found: install the Debian package dcmtk")
    return lambda data: _run_on_bytes(["dsrdump", "+U8"], data)


def make_instances(series: Sequence[tuple[str, int]]) -> list[Instance]:
    """Instances for series given as (modality, instance count), as a C-FIND would list them."""
    out = []
    for n, (modality, count) in enumerate(series, start=1):
        series_uid = new_uid()
        for i in range(count):
            out.append(Instance(series_uid, modality, n, f"{modality} série {n}", SOP_CLASS[modality],
                                new_uid(), i + 1))
    return out


def patient(**overrides: Any) -> Patient:
    base = Patient("2770763220829", INS_TEST_OID, "DUPONT", "Hélène Marie", date(1977, 7, 6), "F")
    return replace(base, **overrides)


def study(**overrides: Any) -> Study:
    base = Study(
        study_uid=new_uid(), study_date=date(2024, 5, 2), study_time=time(9, 30, 5),
        study_id="ST42", accession_number="ACC2024001", accession_issuer_oid="1.2.250.1.999.1.2.3",
        placer_order_number="ORD-77", placer_order_issuer_oid="1.2.250.1.999.1.2.4",
        filler_order_number="FIL-88", referring_physician="MARTIN^Paul",
        description="Scanner thoracique",
    )
    return replace(base, **overrides)


@pytest.fixture
def make_request() -> Callable[..., KosRequest]:
    def make(series: Sequence[tuple[str, int]] = (("CT", 3),), **overrides: Any) -> KosRequest:
        req = KosRequest(patient=patient(), study=study(), instances=make_instances(series),
                         public_url=PUBLIC_URL)
        return replace(req, **overrides)

    return make

