"""Source-role benchmark (not run in CI): from the HL7 ACK to the KOS accepted by the DMP.

One run starts a private Orthanc (PACS), the strict DMP simulator (its own process, mTLS), a test
PKI on SoftHSM and a real ``drimbox run``. It reports, for studies of 300 and 1,300 instances:
time from ACK to KOS accepted (p50/p95), the box's KOS build time, and as the peer reference the
time DCMTK ``findscu`` takes for the same IMAGE-level queries against the same Orthanc; then the
sustained rate of a burst of reports.

    .venv/bin/python bench/bench_source.py [--reports 5] [--burst 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from appliance.hl7.mllp import MllpClient  # noqa: E402
from appliance.hl7 import read_report  # noqa: E402
from appliance.keys.testpki import make_test_pki  # noqa: E402
from tests.conftest import conformance_path, free_port  # noqa: E402
from tests.dmp.pki import box_client_context, simulator_certs  # noqa: E402
from tests.peers.orthanc import DCMTK_ENV, Orthanc  # noqa: E402
from tests.peers.network import Simulator, source_box_config  # noqa: E402
from tests.source.test_source_flows import variant  # noqa: E402


def tiny_study(out: Path, study_uid: str, accession: str, ipp: str, n: int) -> list[Path]:
    """n small CT instances (64x64): the KOS path needs C-FIND rows, not pixels."""
    from appliance.generate import synthetic_study

    paths = synthetic_study("CT", 1, out_dir=out / "seed", study_uid=study_uid,
                            accession=accession, patient_id=ipp)
    seed = pydicom.dcmread(paths[0])
    seed.Rows = seed.Columns = 64
    seed.PixelData = b"\0" * (64 * 64 * 2)
    series = [pydicom.uid.generate_uid() for _ in range(max(1, n // 300))]
    out_paths = []
    for i in range(n):
        seed.SeriesInstanceUID = series[i % len(series)]
        seed.SeriesNumber = i % len(series) + 1
        seed.SOPInstanceUID = seed.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        seed.InstanceNumber = i + 1
        p = out / f"i{i:05d}.dcm"
        seed.save_as(p)
        out_paths.append(p)
    return out_paths


async def ack(box, msg: str) -> float:
    client = await MllpClient.connect("127.0.0.1", box.hl7, timeout=60)
    try:
        reply = await client.send(msg)
    finally:
        await client.close()
    assert "MSA|AA" in reply, reply
    return time.time()


def published_at(box, study_uid: str, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = [j for j in box.jobs() if j["study_uid"] == study_uid]
        if jobs and jobs[-1]["state"] in ("published", "failed", "quarantined"):
            job = max(jobs, key=lambda j: j["id"])
            assert job["state"] == "published", job
            _, detail = box.admin("GET", f"/reports/{job['id']}")
            return max(p["published_at"] for p in detail["publications"] if p["published_at"])
        time.sleep(0.02)
    raise TimeoutError(study_uid)


def findscu_seconds(pacs: Orthanc, study_uid: str) -> float:
    """The peer reference: DCMTK's findscu, series then image level, for the same study."""
    t0 = time.perf_counter()
    common = ["findscu", "-S", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port),
              "-k", f"StudyInstanceUID={study_uid}"]
    out = subprocess.run([*common, "-k", "QueryRetrieveLevel=SERIES", "-k", "SeriesInstanceUID"],
                         capture_output=True, text=True, env=DCMTK_ENV, check=True)
    series = [line.split("[")[1].split("]")[0].strip("\x00 ") for line in out.stderr.splitlines()
              if "(0020,000e)" in line and "[" in line]
    for se in series:
        subprocess.run([*common, "-k", "QueryRetrieveLevel=IMAGE", "-k",
                        f"SeriesInstanceUID={se}", "-k", "SOPInstanceUID", "-k", "SOPClassUID",
                        "-k", "InstanceNumber"], capture_output=True, env=DCMTK_ENV, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=5, help="reports per study size")
    ap.add_argument("--burst", type=int, default=60, help="reports in the sustained burst")
    args = ap.parse_args()
    conf = conformance_path()
    if conf is None:
        print("needs the ANS conformance data (DRIMBOX_CONFORMANCE)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-source-"))
    pki = make_test_pki(work / "pki")
    certs = simulator_certs(pki, work / "sim")
    sim_proc = subprocess.Popen([sys.executable, "-m", "tests.peers.dmp", "--port", "0",
                                 "--cert", str(certs.cert), "--key", str(certs.key),
                                 "--client-ca", str(certs.client_ca)],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    info = json.loads(sim_proc.stdout.readline())  # type: ignore[union-attr]
    sim = Simulator(sim_proc, info["url"], info["port"], box_client_context(pki, 1))
    box_dicom = free_port()
    pacs = Orthanc(modalities={"box": ("DRIMBOX", "127.0.0.1", box_dicom)},
                   workdir=work / "orthanc").start()
    pacs.box_dicom_port = box_dicom  # type: ignore[attr-defined]
    box = source_box_config(work / "box", pki, sim, pacs).start()
    try:
        template = variant(conf, "1.2.3", "X", "T0")
        r0 = read_report(template)
        sim.add_patient(f"{r0.ins}^^^&{r0.ins_oid}&ISO^NH")
        rows = []
        seq = 0
        for size in (300, 1300):
            lat, ref, build = [], [], []
            for k in range(args.reports):
                seq += 1
                uid = pydicom.uid.generate_uid()
                acc = f"ACNBENCH{seq:04d}"
                msg = variant(conf, uid, acc, f"BENCH-{seq}")
                pacs.upload(tiny_study(work / "s" / str(seq), uid, acc, r0.ipp, size))
                ref.append(findscu_seconds(pacs, uid))
                t_ack = asyncio.run(ack(box, msg))
                lat.append(published_at(box, uid) - t_ack)
            from appliance.dicom import kos as kosmod

            insts = [kosmod.Instance(series_uid="1.2.3.4", modality="CT", series_number=1,
                                     series_description="", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                     sop_instance_uid=f"1.2.3.4.{i}", instance_number=i)
                     for i in range(1, size + 1)]
            req = kosmod.KosRequest(
                patient=kosmod.Patient(ins=r0.ins, ins_oid=r0.ins_oid, family_name="X"),
                study=kosmod.Study(study_uid="1.2.3", accession_number="A"), instances=insts,
                public_url="https://db1.example.org")
            for _ in range(5):
                t0 = time.perf_counter()
                kosmod.build_kos(req)
                build.append(time.perf_counter() - t0)
            q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else lat * 19
            rows.append((size, statistics.median(lat), q[-1], statistics.median(build),
                         statistics.median(ref)))
        # Sustained: a burst of small reports, all sent, then until all published.
        uids = []
        for k in range(args.burst):
            seq += 1
            uid = pydicom.uid.generate_uid()
            msg = variant(conf, uid, f"ACNB{seq:05d}", f"BURST-{seq}")
            pacs.upload(tiny_study(work / "b" / str(seq), uid, f"ACNB{seq:05d}", r0.ipp, 3))
            uids.append((uid, msg))
        t0 = time.time()
        for uid, msg in uids:
            asyncio.run(ack(box, msg))
        t_acked = time.time() - t0
        last = max(published_at(box, uid) for uid, _ in uids)
        per_min = args.burst / (last - t0) * 60

        print(f"\nSource role: ACK -> KOS accepted by the DMP simulator ({args.reports} reports "
              "per size)")
        print(f"{'instances':>9} {'p50 s':>8} {'p95 s':>8} {'KOS build ms':>13} "
              f"{'findscu s (peer)':>17} {'p50 / findscu':>14}")
        for size, p50, p95, b, f in rows:
            print(f"{size:>9} {p50:>8.3f} {p95:>8.3f} {b * 1000:>13.1f} {f:>17.3f} "
                  f"{p50 / f:>14.2f}")
        print(f"\nsustained: {args.burst} reports ACKed in {t_acked:.1f} s, all published after "
              f"{last - t0:.1f} s -> {per_min:.0f} reports/min")
    finally:
        box.stop()
        pacs.stop()
        sim_proc.send_signal(signal.SIGTERM)
        sim_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
