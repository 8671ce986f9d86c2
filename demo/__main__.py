"""Demo network on loopback: a PACS with a study, a source DRIMbox, the simulated national
services (DMP, ANS whitelist, Pro Santé Connect), a RIS and a peer DRIMbox's client.

What it shows: the RIS sends the validated report (HL7 ORU^R01 + CDA over MLLP); the box finds the
study in the PACS, builds the KOS and publishes it, signed with keys that never leave a SoftHSM
token, to the strict DMP simulator over mutual TLS; the box fetches the study into its own store.
A peer box of another structure (its own token key, on the signed national whitelist) then reads
the KOS's series over mutual TLS with a professional's PSC token and the KOS UID; a caller without
a token and a structure not on the whitelist are refused, and the audit trail has all three.
Grows with each capability toward the consumer box and viewer.
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
from tests.peers import trustkit  # noqa: E402
from tests.peers.ans.server import AnsPeer  # noqa: E402  (the simulated ANS whitelist)
from tests.peers.ans.signer import domain_for_certificate  # noqa: E402
from tests.peers.network import source_box_config, start_simulator, with_tls  # noqa: E402
from tests.peers.peerbox import PeerClient, dicom_parts  # noqa: E402
from tests.peers.psc.launcher import start_psc  # noqa: E402
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
             body: dict | None = None, context: object = None) -> object:
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=600, context=context) as r:  # type: ignore[arg-type]
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
    sim = pacs = box = ans = psc = None
    peers: list[PeerClient] = []
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

        step("starting the simulated ANS (signed whitelist: the peer structure is on it) and "
             "Pro Santé Connect")
        ans = AnsPeer.start(work / "ans")
        ans.publish([domain_for_certificate(pki.structures[1].auth_cert, "902", "db2.test")])
        # The structures' TLS certificates name their CA's CRL (served by the test ANS here).
        crl_url = f"{ans.base}/crl/{trustkit.IGC_ORG_CRL}.crl"
        ans.extra_crls[trustkit.IGC_ORG_CRL] = pki.crl("org")
        chains = [trustkit.auth_chain(pki, i, work / f"auth-{i}.pem", crl_url=crl_url)[0]
                  for i in (0, 1)]
        psc = start_psc(pki, work / "psc")
        dn = [_subject(s.auth_cert) for s in pki.structures]
        psc.register_client("drimbox-source", ["https://localhost/cb"], dn[0])
        psc.register_client("drimbox-peer", ["https://db2.test/cb"], dn[1],
                            audiences=["drimbox-source"])

        step("starting the source DRIMbox (drimbox run; HTTPS through its TLS gateway)")
        extra = trustkit.box_config(ans, psc, "drimbox-source", pki.bundle)
        box = with_tls(source_box_config(work / "box", pki, sim, pacs, extra=extra,
                                         public_url="https://localhost:{http}"), pki).start()
        base = f"https://localhost:{box.http}"
        tls = box.tls_context
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
                          {"study_uid": study_uid}, context=tls)
        received = result["received"]  # type: ignore[index]

        step("a peer DRIMbox (structure 2, its token key) reads each series of the KOS: mTLS "
             "+ PSC token + KOS-SOPInstanceUID")
        env = box.env
        peer = PeerClient(pki, 1, chains[1], env)
        stranger = PeerClient(pki, 0, chains[0], env)
        peers += [peer, stranger]
        pro = psc.issue_token("radiologue", "drimbox-peer")["access_token"]
        wanted = {"KOS-SOPInstanceUID": manifest.sop_instance_uid,
                  "Accept": 'multipart/related; type="application/dicom"'}
        read = 0
        for s in manifest.series:
            r = peer.get(str(s.retrieve_url), {**wanted, "Authorization": f"Bearer {pro}"})
            n = len(dicom_parts(r)) if r["status"] == 200 else 0
            print(f"    {s.retrieve_url.rsplit('/', 1)[1][:24]}...: HTTP {r['status']}, "
                  f"{n} instances, {len(r.get('body', b''))} bytes")
            read += n
        first = str(manifest.series[0].retrieve_url)
        no_token = peer.get(first, wanted)
        not_listed = stranger.get(first, {**wanted, "Authorization": f"Bearer {pro}"})
        print(f"    without a PSC token: HTTP {no_token['status']}; the source's own structure "
              f"(not on the whitelist): HTTP {not_listed['status']}")
        ok = (received == len(files) and read == len(files)
              and len(manifest.sop_instance_uids) == len(files)
              and no_token["status"] == 401 and not_listed["status"] == 403)

        print()
        print("Demo network (all on 127.0.0.1):")
        print(f"  PACS (Orthanc)     DICOM {pacs.dicom_port}   web {pacs.url}")
        print(f"  DRIMbox (source)   DICOM {box_dicom}   HL7/MLLP {box.hl7}   HTTPS {base}")
        print(f"  DMP simulator      {sim.url}  (mTLS; inspect: /_inspect/entries)")
        print(f"  ANS whitelist      {ans.url}  (signed XAdES; CRLs at {ans.base}/crl/)")
        print(f"  Pro Santé Connect  {psc.discovery_url}")
        print(f"  health             {base}/healthz  (detail with the admin token)")
        for s in manifest.series:
            print(f"  KOS RetrieveURL    {s.retrieve_url}  (peers only: mTLS + token + KOS)")
        print(f"  audit trail        .venv/bin/drimbox audit export -c {box.config_path} "
              "--since 2000-01-01")
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
        for p in peers:
            p.close()
        if box is not None:
            box.stop()
        if psc is not None:
            psc.stop()
        if ans is not None:
            ans.stop()
        if pacs is not None:
            pacs.stop()
        if sim is not None:
            sim.stop()
        if args.workdir is None and args.check:
            shutil.rmtree(work, ignore_errors=True)


def _subject(cert_pem: Path) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem.read_bytes()).subject.rfc4514_string()


if __name__ == "__main__":
    raise SystemExit(main())
