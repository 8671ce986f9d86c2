"""Issue #2 end to end, through a real daemon: DCMTK and Orthanc in, QIDO/WADO out."""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pydicom
import pytest

from appliance.generate import synthetic_study
from tests.e2e.conftest import start_box, stop_box
from tests.peers.orthanc import Orthanc, available

DCMTK = {**os.environ, "TCP_NODELAY": "1"}
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset after the file meta group (DIMSE carries no file meta: the receiver
    writes its own, so only the dataset can be byte-identical)."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR
    return part10[144 + group_length:]


def _multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [p.get_payload(decode=True) for p in msg.get_payload()]


@needs_dcmtk
def test_storescu_then_qido_and_wado_return_what_was_sent(tmp_path: Path) -> None:
    box = start_box(tmp_path, modalities='\nmodalities = [{ae_title = "STORESCU"}]')
    try:
        files = synthetic_study("CT", 6, out_dir=tmp_path / "ct", series=2)
        r = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", box.ae_title, "-xs",
                            "--max-pdu", "131072", "127.0.0.1", str(box.dicom), *map(str, files)],
                           capture_output=True, text=True, env=DCMTK, timeout=120)
        assert r.returncode == 0, r.stderr
        ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
        status, _, body = box.get(f"/dicom-web/studies?StudyInstanceUID={ds0.StudyInstanceUID}")
        assert status == 200
        (study,) = json.loads(body)
        assert study["00201208"]["Value"] == [12]  # NumberOfStudyRelatedInstances
        status, _, body = box.get(f"/dicom-web/studies/{ds0.StudyInstanceUID}/series")
        series = json.loads(body)
        assert len(series) == 2
        seen = 0
        for se in series:
            se_uid = se["0020000E"]["Value"][0]
            status, _, body = box.get(f"/dicom-web/studies/{ds0.StudyInstanceUID}/series/"
                                      f"{se_uid}/instances")
            seen += len(json.loads(body))
        assert seen == 12
        for f in files[:3]:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            status, headers, body = box.get(
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}",
                headers={"Accept": 'multipart/related; type="application/dicom"'})
            assert status == 200
            (part,) = _multipart_parts(body, headers["Content-Type"])
            assert dataset_bytes(part) == dataset_bytes(f.read_bytes())
            assert part == (box.data_dir / "instances" / ds.StudyInstanceUID /
                            ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm").read_bytes()
        # No patient identifier reaches the logs.
        logs = box.logs()
        assert "DEMO^PATIENT" not in logs and str(ds0.PatientID) not in logs
    finally:
        assert stop_box(box) == 0


@needs_dcmtk
def test_unknown_calling_ae_is_refused(running_box) -> None:
    f = synthetic_study("CT", 1, out_dir=running_box.data_dir.parent / "one")[0]
    r = subprocess.run(["storescu", "-aet", "INTRUDER", "-aec", running_box.ae_title, "127.0.0.1",
                        str(running_box.dicom), str(f)], capture_output=True, text=True,
                       env=DCMTK, timeout=60)
    assert r.returncode != 0
    assert "Rejected" in r.stderr or "rejected" in r.stderr.lower()
    assert "INTRUDER" in running_box.logs()


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_box_retrieves_a_study_from_orthanc(tmp_path: Path) -> None:
    from tests.conftest import free_port

    dicom_port = free_port()
    with Orthanc(modalities={"box": ("DRIMBOX", "127.0.0.1", dicom_port)},
                 workdir=tmp_path / "orthanc") as pacs:
        files = synthetic_study("MR", 8, out_dir=tmp_path / "mr")
        pacs.upload(files)
        box = start_box(tmp_path / "box", pacs_aet=pacs.aet, pacs_port=pacs.dicom_port,
                        dicom_port=dicom_port)
        try:
            study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            status, found = box.admin("/pacs/find", {"study_uid": study_uid})
            assert status == 200 and len(found["studies"]) == 1
            status, result = box.admin("/pacs/retrieve", {"study_uid": study_uid})
            assert status == 200, result
            assert result["received"] == 8
            status, _, body = box.get(f"/dicom-web/studies?StudyInstanceUID={study_uid}")
            assert json.loads(body)[0]["00201208"]["Value"] == [8]
            status, result = box.admin("/pacs/retrieve", {"study_uid": "not-a-uid"})
            assert status == 400
        finally:
            stop_box(box)


def test_admin_api_is_default_deny(running_box) -> None:
    import urllib.error
    import urllib.request

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}):
        req = urllib.request.Request(running_box.base + "/api/admin/pacs/echo", method="POST",
                                     data=b"{}", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
    token_file = running_box.data_dir / "admin-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


def test_listening_sockets_are_exactly_the_interfaces(running_box) -> None:
    """ARCHITECTURE.md §2: a box without the source role listens on DICOM and HTTP only (the
    full source box, with HL7, is checked in tests/source/test_https.py)."""
    proc = psutil.Process(running_box.proc.pid)
    listening = sorted((c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN)
    assert listening == sorted([("127.0.0.1", running_box.dicom),
                                ("127.0.0.1", running_box.http)])


def test_demo_check_runs_the_readme_main_job() -> None:
    if available() is not None:
        pytest.skip(str(available()))
    r = subprocess.run([sys.executable, "-m", "demo", "--check", "--slices", "10"],
                       capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo check: every step worked" in r.stdout
    # The peer box read the KOS's series; no token and an unlisted structure were refused.
    assert r.stdout.count(": HTTP 200, 10 instances") == 2
    assert "without a PSC token: HTTP 401" in r.stdout and "whitelist): HTTP 403" in r.stdout


def test_correlation_id_is_echoed_or_replaced(running_box) -> None:
    import re

    status, headers, _ = running_box.get("/healthz", headers={"X-Correlation-ID": "ris-42-abc"})
    assert status == 200 and headers["X-Correlation-ID"] == "ris-42-abc"
    for hostile in ("a b", "x" * 65, "é-1", "id;drop"):
        status, headers, _ = running_box.get("/healthz", headers={"X-Correlation-ID": hostile})
        assert re.fullmatch(r"h[0-9a-f]{16}", headers["X-Correlation-ID"]), hostile
    status, headers, _ = running_box.get("/no/such/path")
    assert status == 404 and re.fullmatch(r"h[0-9a-f]{16}", headers["X-Correlation-ID"])


def test_a_box_serves_no_patient_data_to_an_address_it_was_not_opened_to(
        tmp_path: Path) -> None:
    """Default deny on a running box: plain HTTP from an address outside ``dicomweb.open_to``
    gets 401 and no data, the refusal is in the audit trail, and every start warns while
    open_to is not empty."""
    import csv

    box = start_box(tmp_path, extra='\n[dicomweb]\nopen_to = ["192.0.2.0/24"]\n')
    try:
        for path in ("/dicom-web/studies", "/dicom-web/studies/1.2.3/series/4.5/instances/6"):
            status, headers, body = box.get(path)
            assert status == 401 and headers["Content-Type"].startswith("application/json")
            assert "authentication required" in json.loads(body)["reason"]
        assert any("dicomweb.open_to lets these addresses read" in line
                   for line in box.logs().splitlines())
    finally:
        assert stop_box(box) == 0
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "audit", "export", "-c",
                        str(box.config_path), "--since", "2000-01-01"],
                       capture_output=True, text=True, timeout=60)
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert [(x["outcome"], x["status"], x["actor"]) for x in rows] == \
        [("refused", "401", "http:127.0.0.1")] * 2
