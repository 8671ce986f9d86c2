"""Demo network on loopback: a PACS with a study, a source DRIMbox, the simulated DMP, a RIS.

What it shows: the RIS sends the validated report (HL7 ORU^R01 + CDA over MLLP); the box finds the
study in the PACS, builds the KOS and publishes it, signed with keys that never leave a SoftHSM
token, to the strict DMP simulator over mutual TLS; the box also fetches the study into its own
store and serves it over DICOMweb. Grows with each capability toward the consumer box and viewer.
``--check`` runs every step, verifies it and exits (a test runs it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from appliance.dicom.kos import parse_kos  # noqa: E402
from appliance.generate import synthetic_study  # noqa: E402
from appliance.hl7.ack import parse_ack  # noqa: E402
from appliance.hl7.mllp import MllpClient  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.peers.network import source_box_config, start_simulator  # noqa: E402
from tests.peers.orthanc import Orthanc, available  # noqa: E402  (the real PACS peer)
from tests.peers.ris import Exam, Patient, Professional, oru  # noqa: E402


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


async def send_report(port: int, message: str) -> str:
    client = await MllpClient.connect("127.0.0.1", port, timeout=30)
    try:
        return await client.send(message)
    finally:
        await client.close()


def get_json(url: str, token: str | None = None, method: str = "GET",
             body: dict | None = None) -> object:
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="run every step, verify, exit")
    ap.add_argument("--slices", type=int, default=60, help="slices of the demo CT")
    ap.add_argument("--workdir", type=Path, help="keep state here (default: a temp dir)")
    args = ap.parse_args(argv)

    reason = available()
    if reason:
        print(f"demo: {reason}; run scripts/setup.sh first", file=sys.stderr)
        return 2
    from appliance.keys.testpki import make_test_pki

    work = args.workdir or Path(tempfile.mkdtemp(prefix="drimbox-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    sim = pacs = box = None
    try:
        step("creating the structure's keys on a SoftHSM token (test IGC-Santé PKI)")
        pki = make_test_pki(work / "pki")
        step("starting the simulated DMP (strict, mutual TLS)")
        sim = start_simulator(pki, work / "dmp")
        step("starting the site PACS (Orthanc)")
        box_dicom = free_port()
        pacs = Orthanc(aet="PACS", modalities={"drimbox": ("DRIMBOX", "127.0.0.1", box_dicom)},
                       workdir=work / "orthanc").start()
        pacs.box_dicom_port = box_dicom  # type: ignore[attr-defined]

        patient, radiologist = Patient(), Professional()
        step(f"loading a synthetic CT of {args.slices} slices into the PACS")
        files = synthetic_study("CT", args.slices, out_dir=work / "study", series=2,
                                accession="DEMO0001", patient_id=patient.ipp,
                                patient_name=f"{patient.family}^{patient.given}")
        pacs.upload(files)
        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        sim.add_patient(f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH")

        step("starting the source DRIMbox (drimbox run)")
        # The demo's own QIDO-RS read below is a site tool on loopback (dicomweb.open_to).
        box = source_box_config(work / "box", pki, sim, pacs,
                                public_url="http://127.0.0.1:{http}",
                                extra='\n[dicomweb]\nopen_to = ["127.0.0.1"]\n').start()
        base = f"http://127.0.0.1:{box.http}"
        token = (box.data_dir / "admin-token").read_text().strip()

        step("the RIS sends the validated report (ORU^R01 + CDA over MLLP)")
        t0 = time.time()
        ack = asyncio.run(send_report(box.hl7, oru(patient, radiologist,
                                                   Exam(study_uid, "DEMO0001"))))
        code, _cid, errors = parse_ack(ack)
        if code != "AA":
            raise SystemExit(f"the box refused the report: {code} {errors}")
        job = box.wait_jobs(lambda js: bool(js) and js[0]["state"] not in
                            ("received", "resolved", "built"), timeout=120)[0]
        if job["state"] != "published":
            raise SystemExit(f"report not published: {job['state']}: {job['reason']}")
        entries = sim.kos_entries()
        manifest = parse_kos(sim.document(entries[0]["unique_id"]))
        print(f"    KOS {manifest.sop_instance_uid} published in the DMP "
              f"{time.time() - t0:.1f} s after the report: {len(manifest.sop_instance_uids)} "
              f"instances, {len(manifest.series)} series")

        step("the box fetches the study from the PACS into its store (C-MOVE)")
        result = get_json(f"{base}/api/admin/pacs/retrieve", token, "POST",
                          {"study_uid": study_uid})
        received = result["received"]  # type: ignore[index]
        studies = get_json(f"{base}/dicom-web/studies?StudyInstanceUID={study_uid}")
        ok = (received == len(files) and isinstance(studies, list) and len(studies) == 1
              and len(manifest.sop_instance_uids) == len(files))

        print()
        print("Demo network (all on 127.0.0.1):")
        print(f"  PACS (Orthanc)     DICOM {pacs.dicom_port}   web {pacs.url}")
        print(f"  DRIMbox (source)   DICOM {box_dicom}   HL7/MLLP {box.hl7}   HTTP {base}")
        print(f"  DMP simulator      {sim.url}  (mTLS; inspect: /_inspect/entries)")
        print(f"  health             {base}/healthz")
        print(f"  QIDO-RS            {base}/dicom-web/studies?StudyInstanceUID={study_uid}")
        for s in manifest.series:
            print(f"  KOS RetrieveURL    {s.retrieve_url}")
        print(f"  admin API          {base}/api/admin/reports  (Bearer token in "
              f"{box.data_dir / 'admin-token'})")
        print(f"  box logs           {box.log_path}")
        if not ok:
            print("demo: verification FAILED (see the logs)", file=sys.stderr)
            return 1
        if args.check:
            print("demo check: every step worked")
            return 0
        print("\nPress Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if box is not None:
            box.stop()
        if pacs is not None:
            pacs.stop()
        if sim is not None:
            sim.stop()
        if args.workdir is None and args.check:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
