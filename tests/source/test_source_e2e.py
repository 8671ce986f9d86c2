"""Issue #5 end to end: HL7 report -> PACS -> KOS -> DMP simulator, through a real daemon.

Peers: Orthanc (PACS), the strict DMP simulator (own process, mTLS, checks VIHF/XAdES), SoftHSM
(the box's keys), an MLLP client (the RIS).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.dicom.kos import parse_kos
from appliance.hl7 import read_report
from appliance.hl7.ack import parse_ack
from appliance.hl7.mllp import MllpClient
from tests.hl7.helpers import ans_files, fill
from tests.source.conftest import SourceBox, source_box_config, sop_uids, study_for

pytestmark = pytest.mark.integration


async def send(box: SourceBox, message: str) -> tuple[str, list]:
    client = await MllpClient.connect("127.0.0.1", box.hl7, timeout=30)
    try:
        ack = await client.send(message)
    finally:
        await client.close()
    code, _cid, errors = parse_ack(ack)
    return code, errors


def xds_patient(report: Any) -> str:
    return f"{report.ins}^^^&{report.ins_oid}&ISO^NH"


def by_study(entries: list[dict], study_uid: str) -> list[dict]:
    return [e for e in entries if any(study_uid in r for r in e["reference_ids"])]


@pytest.fixture
def box(tmp_path: Path, pki, dmp_simulator, pacs) -> SourceBox:
    b = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs).start()
    yield b
    b.stop()


def test_ans_referencing_messages(box: SourceBox, conformance_dir: Path, dmp_simulator, pacs,
                                  tmp_path: Path) -> None:
    files = ans_files(conformance_dir)
    msgs = {name: fill(f.read_text(encoding="utf-8")) for name, f in files.items()}
    reports = {name: read_report(m) for name, m in msgs.items()}
    patient = xds_patient(reports["CR_C-ORU.hl7"])
    dmp_simulator.add_patient(patient)
    # One study per exam in the PACS, matching the report's study UID, accession and IPP.
    studies: dict[str, set[str]] = {}
    for name, r in reports.items():
        uid = r.cda_report.study_uid
        if uid not in studies:
            paths = study_for(r, tmp_path / uid, slices=3, series=2)
            pacs.upload(paths)
            studies[uid] = sop_uids(paths)

    def run(name: str, expect_state: str) -> dict:
        code, errors = asyncio.run(send(box, msgs[name]))
        assert code == "AA", (name, errors)
        study = reports[name].cda_report.study_uid
        jobs = box.wait_jobs(lambda js: any(j["study_uid"] == study and j["state"] in
                                            ("published", "withdrawn", "failed", "quarantined")
                                            and j["id"] == max(x["id"] for x in js
                                                               if x["study_uid"] == study)
                                            for j in js))
        job = max((j for j in jobs if j["study_uid"] == study), key=lambda j: j["id"])
        assert job["state"] == expect_state, (name, job, box.logs()[-3000:])
        return job

    # C (ORU): published; its KOS lists exactly the PACS instances, one RetrieveURL per series.
    run("CR_C-ORU.hl7", "published")
    c_uid = reports["CR_C-ORU.hl7"].cda_report.study_uid
    (entry,) = by_study(dmp_simulator.kos_entries(patient), c_uid)
    assert entry["status"].endswith("Approved")
    kos = parse_kos(dmp_simulator.document(entry["unique_id"]))
    assert kos.sop_instance_uids == studies[c_uid]
    assert kos.patient_id == reports["CR_C-ORU.hl7"].ins
    assert len(kos.series) == 2 and all(
        s.retrieve_url == f"https://db1.test.mesimagesmedicales.fr:8443/dicom-web/studies/"
                          f"{c_uid}/series/{s.series_uid}" for s in kos.series)
    # C again, as MDM^T02: a second report for a published study is a new version (RPLC).
    run("CR_C-MDM.hl7", "published")
    c_entries = by_study(dmp_simulator.kos_entries(patient), c_uid)
    assert sorted(e["status"].rsplit(":", 1)[-1] for e in c_entries) == ["Approved", "Deprecated"]

    # G1 then its update (relatedDocument RPLC in the CDA): replaced.
    run("CR_G1-ORU.hl7", "published")
    run("CR_G1_MAJ-ORU.hl7", "published")
    g_uid = reports["CR_G1-ORU.hl7"].cda_report.study_uid
    g = by_study(dmp_simulator.kos_entries(patient), g_uid)
    assert sorted(e["status"].rsplit(":", 1)[-1] for e in g) == ["Approved", "Deprecated"]

    # I published, then withdrawn (ORC-1 CA / OBX-11 D): deleted from the DMP.
    run("CR_I-ORU.hl7", "published")
    run("CR_I_Depublication-ORU.hl7", "withdrawn")
    i_uid = reports["CR_I-ORU.hl7"].cda_report.study_uid
    (i_entry,) = by_study(dmp_simulator.kos_entries(patient), i_uid)
    assert i_entry["status"].endswith("Deleted")

    for name in ("CR_K-ORU.hl7", "CR_L-ORU.hl7", "CR_U-ORU.hl7"):
        run(name, "published")
        uid = reports[name].cda_report.study_uid
        (e,) = by_study(dmp_simulator.kos_entries(patient), uid)
        assert parse_kos(dmp_simulator.document(e["unique_id"])).sop_instance_uids == studies[uid]

    # Each KOS reached the DMP once: unique uniqueIds, one submission per version.
    uids = [e["unique_id"] for e in dmp_simulator.kos_entries(patient)]
    assert len(uids) == len(set(uids))
    # A repeated message (same MSH-10) is acknowledged without a second publication.
    before = len(dmp_simulator.kos_entries(patient))
    code, _ = asyncio.run(send(box, msgs["CR_K-ORU.hl7"]))
    assert code == "AA"
    time.sleep(1.0)
    assert len(dmp_simulator.kos_entries(patient)) == before
    # Nothing identifying reaches the logs.
    logs = box.logs()
    r = reports["CR_C-ORU.hl7"]
    assert r.ins not in logs and r.ipp not in logs and r.birth_family not in logs
