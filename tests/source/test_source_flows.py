"""Source role flows beyond the happy path, through a real daemon and real peers: images not (yet)
in the PACS, a patient mismatch, a DMP outage, IOCM rejection notes, crashes."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from appliance.dicom import kos as kosmod
from appliance.generate import synthetic_study
from appliance.hl7 import read_report
from tests.hl7.helpers import ans_files, cda_of, fill, replace_cda
from tests.source.conftest import SourceBox, source_box_config, study_for
from tests.source.test_source_e2e import by_study, send, xds_patient

pytestmark = pytest.mark.integration

TEMPLATE = "CR_K-ORU.hl7"


def variant(conformance_dir: Path, study_uid: str, accession: str, control_id: str,
            name: str = TEMPLATE) -> str:
    """An ANS message whose CDA names another study (UID and accession)."""
    msg = fill(ans_files(conformance_dir)[name].read_text(encoding="utf-8"), control_id)
    base = read_report(msg).cda_report
    cda = cda_of(msg).decode("utf-8")
    cda = cda.replace(base.study_uid, study_uid).replace(
        f'extension="{base.accession.extension}"', f'extension="{accession}"')
    return replace_cda(msg, cda.encode("utf-8"))


def final(box: SourceBox, job_id: int, timeout: float = 60) -> dict:
    jobs = box.wait_jobs(lambda js: any(j["id"] == job_id and j["state"] not in
                                        ("received", "resolved", "built") for j in js), timeout)
    return next(j for j in jobs if j["id"] == job_id)


def last_job(box: SourceBox) -> dict:
    return max(box.jobs(), key=lambda j: j["id"])


@pytest.fixture
def patient(conformance_dir: Path, dmp_simulator) -> str:
    msg = fill(ans_files(conformance_dir)[TEMPLATE].read_text(encoding="utf-8"))
    p = xds_patient(read_report(msg))
    dmp_simulator.add_patient(p)
    return p


@pytest.fixture
def box(tmp_path: Path, pki, dmp_simulator, pacs) -> SourceBox:
    b = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs,
                          extra="\n[source]\nimage_wait = 4.0\n").start()
    yield b
    b.stop()


def test_images_missing_then_quarantined_then_retried(box, conformance_dir, pacs, patient,
                                                      dmp_simulator, tmp_path) -> None:
    uid = pydicom.uid.generate_uid()
    msg = variant(conformance_dir, uid, "ACNLATE1", "LATE-1")
    code, _ = asyncio.run(send(box, msg))
    assert code == "AA"  # accepted: the images may still be on their way
    job = last_job(box)
    time.sleep(1.0)
    waiting = next(j for j in box.jobs() if j["id"] == job["id"])
    assert waiting["state"] == "received" and "waiting for the images" in waiting["reason"]
    job = final(box, job["id"], timeout=120)
    assert job["state"] == "quarantined" and "never reached the PACS" in job["reason"]
    # The images arrive; an administrator retries; the KOS is published.
    report = read_report(msg)
    pacs.upload(study_for(report, tmp_path / "late"))
    status, _ = box.admin("POST", f"/reports/{job['id']}/retry")
    assert status == 200
    assert final(box, job["id"])["state"] == "published"
    assert len(by_study(dmp_simulator.kos_entries(patient), uid)) == 1


def test_patient_mismatch_is_quarantined_never_published(box, conformance_dir, pacs, patient,
                                                         dmp_simulator, tmp_path) -> None:
    uid = pydicom.uid.generate_uid()
    msg = variant(conformance_dir, uid, "ACNMIX1", "MIX-1")
    # The PACS holds that study under another patient's IPP.
    pacs.upload(synthetic_study("CT", 2, out_dir=tmp_path / "other", study_uid=uid,
                                accession="ACNMIX1", patient_id="IPP-SOMEONE-ELSE"))
    code, _ = asyncio.run(send(box, msg))
    assert code == "AA"
    job = final(box, last_job(box)["id"])
    assert job["state"] == "quarantined"
    assert "patient ID (IPP) differs" in job["reason"]
    assert "IPP-SOMEONE-ELSE" not in job["reason"]  # reasons carry no identifiers
    assert by_study(dmp_simulator.kos_entries(), uid) == []
    status, detail = box.admin("GET", f"/reports/{job['id']}")
    assert status == 200 and detail["publications"] == []
    # Discard is the administrator's other way out.
    assert box.admin("POST", f"/reports/{job['id']}/discard")[0] == 200
    assert box.admin("POST", f"/reports/{job['id']}/retry")[0] == 409


def test_dmp_outage_queue_drains_in_order(box, conformance_dir, pacs, patient, dmp_simulator,
                                          tmp_path) -> None:
    uid = pydicom.uid.generate_uid()
    first = variant(conformance_dir, uid, "ACNOUT1", "OUT-1")
    pacs.upload(study_for(read_report(first), tmp_path / "s"))
    second = variant(conformance_dir, uid, "ACNOUT1", "OUT-2")
    dmp_simulator.fault(kind="status", status=503, times=3, service="repository")
    try:
        assert asyncio.run(send(box, first))[0] == "AA"
        assert asyncio.run(send(box, second))[0] == "AA"
        time.sleep(1.5)
        jobs = [j for j in box.jobs() if j["study_uid"] == uid]
        assert any("DMP unavailable" in j["reason"] for j in jobs), jobs
    finally:
        dmp_simulator.clear_faults()
    a, b = sorted(j["id"] for j in box.jobs() if j["study_uid"] == uid)
    assert final(box, a, timeout=120)["state"] in ("published", "superseded")
    assert final(box, b, timeout=120)["state"] == "published"
    entries = by_study(dmp_simulator.kos_entries(patient), uid)
    approved = [e for e in entries if e["status"].endswith("Approved")]
    assert len(approved) == 1  # the second report's version is the one listed


def test_iocm_rejection_note_replaces_then_deletes_the_kos(box, conformance_dir, pacs, patient,
                                                          dmp_simulator, tmp_path) -> None:
    uid = pydicom.uid.generate_uid()
    msg = variant(conformance_dir, uid, "ACNIOCM1", "IOCM-1")
    report = read_report(msg)
    files = study_for(report, tmp_path / "s", slices=3, series=2)
    pacs.upload(files)
    assert asyncio.run(send(box, msg))[0] == "AA"
    assert final(box, last_job(box)["id"])["state"] == "published"
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    # The box also holds the images (fetched for a peer earlier): a rejection purges them.
    token = (box.data_dir / "admin-token").read_text().strip()
    req = urllib.request.Request(f"{box.base}/api/admin/pacs/retrieve", method="POST",
                                 data=json.dumps({"study_uid": uid}).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["received"] == len(files)

    def reject(dss: list) -> None:
        note = kosmod.build_rejection_note(kosmod.RejectionRequest(
            patient_id=report.ipp, patient_name="X^Y",
            study=kosmod.Study(study_uid=uid, accession_number="ACNIOCM1"),
            rejected=[kosmod.Instance(series_uid=d.SeriesInstanceUID, modality="CT",
                                      series_number=int(d.SeriesNumber), series_description="",
                                      sop_class_uid=d.SOPClassUID,
                                      sop_instance_uid=d.SOPInstanceUID) for d in dss]))
        (oid,) = pacs.upload([note.data])
        pacs.post("/modalities/box/store", [oid])  # the PACS C-STOREs the note into the box

    # Reject one series: the KOS is rebuilt without it and replaces the published one.
    rejected = [d for d in datasets if d.SeriesNumber == 1]
    reject(rejected)
    iocm = box.wait_jobs(lambda js: any(j["kind"] == "iocm" and j["state"] == "published"
                                        for j in js))
    entries = by_study(dmp_simulator.kos_entries(patient), uid)
    (current,) = [e for e in entries if e["status"].endswith("Approved")]
    manifest = kosmod.parse_kos(dmp_simulator.document(current["unique_id"]))
    assert manifest.sop_instance_uids == {d.SOPInstanceUID for d in datasets
                                          if d.SeriesNumber == 2}
    stored = {p.stem for p in (box.data_dir / "instances" / uid).rglob("*.dcm")}
    assert not stored & {d.SOPInstanceUID for d in rejected}  # purged from the cache
    assert {d.SOPInstanceUID for d in datasets if d.SeriesNumber == 2} <= stored
    # Reject the rest: nothing left to share, the KOS is deleted from the DMP.
    reject([d for d in datasets if d.SeriesNumber == 2])
    box.wait_jobs(lambda js: sum(1 for j in js if j["kind"] == "iocm"
                                 and j["state"] in ("withdrawn",)) == 1)
    entries = by_study(dmp_simulator.kos_entries(patient), uid)
    assert not [e for e in entries if e["status"].endswith("Approved")]
    assert iocm


def test_burst_with_sigkill_publishes_each_acked_report_exactly_once(
        tmp_path: Path, pki, dmp_simulator, pacs, conformance_dir, patient) -> None:
    n = 200
    rng = random.Random(5)
    uids = [pydicom.uid.generate_uid() for _ in range(n)]
    msgs = [variant(conformance_dir, u, f"ACNB{i:04d}", f"BURST-{i}") for i, u in enumerate(uids)]
    for i, m in enumerate(msgs):
        pacs.upload(study_for(read_report(m), tmp_path / "studies" / str(i), slices=1))
    box = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs).start()
    acked: set[int] = set()
    kills = 0
    try:
        i = 0
        while i < n:
            timer = None
            if rng.random() < 0.03 and kills < 5:
                # SIGKILL at a random moment of this exchange: before the commit, between the
                # commit and the ACK, or while the outbox builds or sends earlier reports.
                timer = threading.Timer(rng.uniform(0.0, 0.03), box.proc.kill)
                timer.start()
                kills += 1
            try:
                code, _ = asyncio.run(send(box, msgs[i]))
            except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
                code = None
            if timer is not None:
                timer.join()
                box.proc.wait(10)
                box.start()
            if code == "AA":
                acked.add(i)
                i += 1
            # no ACK: a RIS sends the same message (same MSH-10) again
        box.wait_jobs(lambda js: len(js) >= len(acked) and all(
            j["state"] in ("published", "superseded") for j in js), timeout=240)
    finally:
        box.stop()
    assert kills >= 1 and len(acked) == n
    entries = dmp_simulator.kos_entries(patient)
    for i in acked:
        mine = by_study(entries, uids[i])
        assert len(mine) == 1, (i, mine)  # exactly once: no duplicate, none lost


def test_correction_and_accession_fallback_with_the_simulated_ris(box, pacs, dmp_simulator,
                                                                  tmp_path) -> None:
    """OBX-11 C publishes a new KOS version (RPLC); OBX-11 D deletes it. A report whose study UID
    the PACS does not know, but whose accession names one study of the same patient, resolves to
    that study."""
    from tests.peers.ris import Exam, Patient, Professional, oru

    patient, doctor = Patient(nir13="2850575123456", ipp="IPP-RIS-7"), Professional()
    dmp_simulator.add_patient(f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH")
    files = synthetic_study("MR", 3, out_dir=tmp_path / "mr", accession="ACNRIS7",
                            patient_id=patient.ipp)
    pacs.upload(files)
    pacs_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    exam = Exam(pydicom.uid.generate_uid(), "ACNRIS7")  # the RIS has another study UID
    for status, expect in (("F", "published"), ("C", "published"), ("D", "withdrawn")):
        code, _ = asyncio.run(send(box, oru(patient, doctor, exam, status=status)))
        assert code == "AA"
        assert final(box, last_job(box)["id"])["state"] == expect, box.jobs()[:3]
        entries = by_study(dmp_simulator.kos_entries(f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH"),
                           "ACNRIS7")
        states = sorted(e["status"].rsplit(":", 1)[-1] for e in entries)
        if status == "F":
            assert states == ["Approved"]
            kos = kosmod.parse_kos(dmp_simulator.document(entries[0]["unique_id"]))
            assert kos.study_uid == pacs_uid  # the PACS study, found by accession
        elif status == "C":
            assert states == ["Approved", "Deprecated"]
        else:
            assert "Approved" not in states


def test_report_not_destined_to_the_dmp_is_not_published(box, pacs, dmp_simulator,
                                                         tmp_path) -> None:
    from tests.peers.ris import Exam, Patient, Professional, oru

    patient = Patient(nir13="1690275123457", ipp="IPP-NODMP")
    xds = f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH"
    dmp_simulator.add_patient(xds)
    files = synthetic_study("CT", 2, out_dir=tmp_path / "ct", accession="ACNNODMP",
                            patient_id=patient.ipp)
    pacs.upload(files)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    msg = oru(patient, Professional(), Exam(uid, "ACNNODMP"), flags={"DESTDMP": False})
    assert asyncio.run(send(box, msg))[0] == "AA"
    job = final(box, last_job(box)["id"])
    assert job["state"] == "done" and "DESTDMP=N" in job["reason"]
    assert dmp_simulator.kos_entries(xds) == []


def test_mdm_t04_without_cda_withdraws_by_document_number(box, conformance_dir, pacs, patient,
                                                          dmp_simulator, tmp_path) -> None:
    """MDM^T04 may carry no document: TXA-12 names the report it withdraws."""
    uid = pydicom.uid.generate_uid()
    oru_msg = variant(conformance_dir, uid, "ACNT04", "T04-PUB", name="CR_C-MDM.hl7")
    report = read_report(oru_msg)
    pacs.upload(study_for(report, tmp_path / "s"))
    assert asyncio.run(send(box, oru_msg))[0] == "AA"
    assert final(box, last_job(box)["id"])["state"] == "published"
    segments = [s for s in oru_msg.split("\r") if not s.startswith("OBX")]
    t04 = "\r".join(segments).replace("MDM^T02^MDM_T02", "MDM^T04^MDM_T04") \
        .replace("T04-PUB", "T04-DEL")
    code, errors = asyncio.run(send(box, t04))
    assert code == "AA", errors
    assert final(box, last_job(box)["id"])["state"] == "withdrawn"
    entries = by_study(dmp_simulator.kos_entries(patient), uid)
    assert entries and all(e["status"].endswith("Deleted") for e in entries)
    # A withdrawal that names no known report is refused with a reason.
    code, errors = asyncio.run(send(box, t04.replace("T04-DEL", "T04-X").replace(
        report.document_number or "1.2.250.1.213.4.5.4.403", "1.2.3.999")))
    assert code == "AE" and "no earlier report" in str(errors)
