"""A peer box reads a study from the source box, and every way it can be refused (issue #9).

Real processes throughout: the source box (``drimbox run``, HTTPS through its TLS gateway with its
keys on SoftHSM), Orthanc as its PACS, the strict DMP simulator, the Pro Santé Connect simulator,
the simulated ANS (signed whitelist + CRLs over HTTP), and peer clients that do mutual TLS with
the other structure's token key (``tests/peers/peerbox.py``). Two structures of the test PKI:
structure 1 is the source box, structure 2 the peer.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
from cryptography import x509

from appliance.dicom.kos import parse_kos
from appliance.generate import synthetic_study
from appliance.hl7.ack import parse_ack
from appliance.hl7.mllp import MllpClient
from tests.peers.ans.server import AnsPeer
from tests.peers.ans.signer import domain_for_certificate
from tests.peers import trustkit
from tests.peers.network import REPO, SourceBox, source_box_config, with_tls
from tests.peers.peerbox import PeerClient, dicom_parts
from tests.peers.psc.launcher import start_psc
from tests.peers.ris import Exam, Patient, Professional, oru

pytestmark = pytest.mark.integration

SOURCE_CLIENT, PEER_CLIENT = "drimbox-test-1", "drimbox-test-2"
USER = "radiologue"             # a test user of the PSC simulator
USER_RPPS = "899700218896"
PEER_DOMAIN = "902"             # the peer's Identifiant in the whitelist
ACCEPT = ('multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.70;'
          'q=0.9,multipart/related; type="application/dicom";'
          'transfer-syntax=1.2.840.10008.1.2.1;q=0.4')


@dataclass
class Network:
    box: SourceBox
    pacs: Any
    psc: Any
    ans: AnsPeer
    peer: PeerClient          # structure 2, on the whitelist
    stranger: PeerClient      # structure 1's own key: a valid certificate, not on the whitelist
    expired: PeerClient       # structure 2's key with an expired certificate
    revoked: PeerClient       # structure 2's key with a certificate its CA's CRL lists
    patient: Patient
    author: Professional
    exam: Exam
    kos_uid: str
    series: dict[str, set[str]]    # series UID -> SOP UIDs listed in the KOS
    started: float

    @property
    def base(self) -> str:
        return f"https://localhost:{self.box.http}/dicom-web"

    def token(self, **kw: Any) -> str:
        return str(self.psc.issue_token(USER, PEER_CLIENT, **kw)["access_token"])

    def headers(self, token: str | None = None, kos: str | None = None) -> dict[str, str]:
        h = {"Accept": ACCEPT, "KOS-SOPInstanceUID": kos or self.kos_uid}
        h["Authorization"] = f"Bearer {token or self.token()}"
        return h


def send(box: SourceBox, message: str) -> str:
    async def go() -> str:
        client = await MllpClient.connect("127.0.0.1", box.hl7, timeout=30)
        try:
            return parse_ack(await client.send(message))[0]
        finally:
            await client.close()
    return asyncio.run(go())


def wait_state(box: SourceBox, study: str, states: tuple[str, ...]) -> dict[str, Any]:
    jobs = box.wait_jobs(lambda js: any(j["study_uid"] == study and j["state"] in states
                                        and j["id"] == max(x["id"] for x in js) for j in js),
                         timeout=90)
    return max(jobs, key=lambda j: j["id"])


def published_kos(sim: Any, study: str) -> list[Any]:
    out = []
    for e in sim.kos_entries():
        if e.get("status", "").endswith("Approved") and any(study in r for r in
                                                             e["reference_ids"]):
            out.append(parse_kos(sim.document(e["unique_id"])))
    return out


def retrieve_into_box(box: SourceBox, study: str) -> int:
    token = (box.data_dir / "admin-token").read_text().strip()
    req = urllib.request.Request(f"{box.base}/api/admin/pacs/retrieve", method="POST",
                                 data=json.dumps({"study_uid": study}).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=box.tls_context, timeout=120) as r:
        return int(json.loads(r.read())["received"])


@pytest.fixture(scope="module")
def net(pki: Any, dmp_simulator: Any, pacs: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("peer-access")
    source, peer = pki.structures[0], pki.structures[1]
    dn = {i: x509.load_pem_x509_certificate(s.auth_cert.read_bytes()).subject.rfc4514_string()
          for i, s in enumerate(pki.structures)}
    ans = AnsPeer.start(tmp / "ans")
    ans.publish([domain_for_certificate(peer.auth_cert, PEER_DOMAIN, "db2.test")])
    # IGC-Santé certificates name their CA's CRL; the test ANS serves the test CA's.
    crl_url = f"{ans.base}/crl/{trustkit.IGC_ORG_CRL}.crl"
    chains = {n: trustkit.auth_chain(pki, i, tmp / f"{n}.pem", crl_url=crl_url)
              for n, i in (("peer", 1), ("stranger", 0), ("revoked", 1))}
    now = dt.datetime.now(dt.UTC)
    chains["expired"] = trustkit.auth_chain(pki, 1, tmp / "expired.pem", crl_url=crl_url,
                                            not_before=now - dt.timedelta(days=30),
                                            not_after=now - dt.timedelta(days=1))
    ans.extra_crls[trustkit.IGC_ORG_CRL] = pki.crl("org", [chains["revoked"][1].serial_number])
    psc = start_psc(pki, tmp / "psc")
    psc.register_client(SOURCE_CLIENT, ["https://db1.test/cb"], dn[0])
    psc.register_client(PEER_CLIENT, ["https://db2.test/cb"], dn[1], audiences=[SOURCE_CLIENT])

    patient = Patient(nir13="2850575123456", ipp="IPP-TRUST-1", family="TRUST", given="LEA")
    author = Professional(org_id=source.structure_id)
    exam = Exam(pydicom.uid.generate_uid(), "ACC-TRUST-1")
    files = synthetic_study("CT", 3, series=2, out_dir=tmp / "study", study_uid=exam.study_uid,
                            accession=exam.accession, patient_id=patient.ipp,
                            patient_name=f"{patient.family}^{patient.given}")
    pacs.upload(files)
    dmp_simulator.add_patient(f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH")

    extra = trustkit.box_config(ans, psc, SOURCE_CLIENT, pki.bundle)
    box = with_tls(source_box_config(tmp / "box", pki, dmp_simulator, pacs, extra=extra,
                                     public_url="https://localhost:{http}"), pki)
    box.start()
    peers: list[PeerClient] = []
    try:
        assert send(box, oru(patient, author, exam)) == "AA"
        assert wait_state(box, exam.study_uid, ("published", "failed", "quarantined"))[
            "state"] == "published"
        (kos,) = published_kos(dmp_simulator, exam.study_uid)
        assert retrieve_into_box(box, exam.study_uid) == len(files)
        peers = [PeerClient(pki, i, chains[n][0], box.env)
                 for n, i in (("peer", 1), ("stranger", 0), ("expired", 1), ("revoked", 1))]
        yield Network(box, pacs, psc, ans, *peers, patient, author, exam,  # type: ignore[misc]
                      kos.sop_instance_uid,
                      {s.series_uid: {x.sop_instance_uid for x in s.sops} for s in kos.series},
                      time.time() - 5)
    finally:
        for p in peers:
            p.close()
        box.stop()
        psc.stop()
        ans.stop()


def parts(answer: dict[str, Any]) -> list[pydicom.Dataset]:
    import io

    return [pydicom.dcmread(io.BytesIO(b)) for b in dicom_parts(answer)]


def audit(net: Network) -> list[dict[str, str]]:
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "audit", "export", "-c",
                        str(net.box.config_path), "--since",
                        dt.datetime.fromtimestamp(net.started, dt.UTC).isoformat()],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return list(csv.DictReader(p.stdout.splitlines()))


def wait_audit(net: Network, predicate: Any, timeout: float = 5.0) -> list[dict[str, str]]:
    deadline = time.time() + timeout
    while True:
        rows = audit(net)
        if predicate(rows) or time.time() > deadline:
            return rows
        time.sleep(0.2)


def test_the_peer_reads_the_series_of_its_kos(net: Network) -> None:
    study = net.exam.study_uid
    for series_uid, sops in net.series.items():
        r = net.peer.get(f"{net.base}/studies/{study}/series/{series_uid}", net.headers())
        assert r["status"] == 200, r
        got = parts(r)
        assert {ds.SOPInstanceUID for ds in got} == sops
        assert all(ds.SeriesInstanceUID == series_uid for ds in got)
        one = sorted(sops)[0]
        r = net.peer.get(f"{net.base}/studies/{study}/series/{series_uid}/instances/{one}",
                         net.headers())
        assert r["status"] == 200 and [ds.SOPInstanceUID for ds in parts(r)] == [one]
    # Searches and metadata show the KOS's series and instances only.
    r = net.peer.get(f"{net.base}/studies/{study}/series",
                     {**net.headers(), "Accept": "application/dicom+json"})
    assert r["status"] == 200
    assert {x["0020000E"]["Value"][0] for x in json.loads(r["body"])} >= set(net.series)
    rows = wait_audit(net, lambda rs: any(x["action"] == "dicomweb.retrieve" for x in rs))
    served = [x for x in rows if x["action"] == "dicomweb.retrieve"]
    assert served and all(x["outcome"] == "ok" and x["status"] == "200" for x in served)
    pdn = net.peer.certificate.subject
    for x in served:
        assert x["professional"] == USER_RPPS
        assert x["structure"] == PEER_DOMAIN
        assert x["peer_dn"] == pdn.rfc4514_string()
        assert x["patient_id"] and x["study_uid"] == study and int(x["bytes"]) > 0


def test_the_ans_sample_requests_verbatim(net: Network, conformance_dir: Path) -> None:
    """The ANS validator's WADO-RS requests, headers as written (our token, KOS and URL)."""
    samples = conformance_dir / "echantillons-validateurs" / "validateur-wado-rs"
    for sample in sorted(samples.glob("requete-*/*.txt")):
        lines = sample.read_text(encoding="utf-8").splitlines()
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        headers = {k.strip(): v.strip() for k, v in headers.items()
                   if k.strip() not in ("Host", "Connection", "User-Agent")}
        headers["Authorization"] = f"Bearer {net.token()}"
        headers["KOS-SOPInstanceUID"] = net.kos_uid
        series_uid, sops = sorted(net.series.items())[0]
        url = f"{net.base}/studies/{net.exam.study_uid}/series/{series_uid}"
        if "/instances/" in lines[0]:
            url += f"/instances/{sorted(sops)[0]}"
        r = net.peer.get(url, headers)
        assert r["status"] == 200, (sample.name, r)
        assert r["headers"]["Content-Type"].startswith('multipart/related; type="application/dicom"')
        assert {ds.SOPInstanceUID for ds in parts(r)} <= sops


def refusal(net: Network, client: PeerClient | None, path: str, headers: dict[str, str],
            status: int, reason: str) -> dict[str, Any]:
    """Make the request, check the answer, and find the audit row that records it."""
    before = time.time()
    if client is None:      # anonymous HTTPS: no client certificate
        req = urllib.request.Request(net.base + path, headers=headers)
        try:
            with urllib.request.urlopen(req, context=net.box.tls_context, timeout=30) as r:
                answer = {"status": r.status, "body": r.read()}
        except urllib.error.HTTPError as e:
            answer = {"status": e.code, "body": e.read()}
    else:
        answer = client.get(net.base + path, headers)
    assert answer["status"] == status, answer
    body = json.loads(answer["body"])
    assert body["status"] == status and "TRUST" not in answer["body"].decode()
    rows = wait_audit(net, lambda rs: any(x["reason"] and reason in x["reason"] for x in rs))
    mine = [x for x in rows if reason in x["reason"]
            and dt.datetime.fromisoformat(x["ts"]).timestamp() >= before - 1]
    assert mine, (reason, rows[-3:])
    assert mine[-1]["outcome"] == "refused" and mine[-1]["status"] == str(status)
    return body


def test_every_refusal_has_its_status_and_its_audit_row(net: Network) -> None:
    study = net.exam.study_uid
    series_uid = sorted(net.series)[0]
    path = f"/studies/{study}/series/{series_uid}"
    h = net.headers()
    cases = [
        (None, path, h, 401, "authentication required"),                      # no client cert
        (net.stranger, path, h, 403, "not on the national whitelist"),
        (net.expired, path, h, 403, "expired"),
        (net.revoked, path, h, 403, "as revoked"),
        (net.peer, path, {k: v for k, v in h.items() if k != "Authorization"}, 401,
         "access token is required"),
        (net.peer, path, net.headers(net.token(audiences=[PEER_CLIENT])), 401,
         "not for this box"),
        (net.peer, path, net.headers(kos=pydicom.uid.generate_uid(prefix="2.25.")), 404,
         "no KOS of this box"),
        (net.peer, "/studies/1.2.3.4.5/series/6.7", h, 404, "another study"),
        (net.peer, path, {k: v for k, v in h.items() if k != "KOS-SOPInstanceUID"}, 400,
         "header is required"),
        (net.peer, path, net.headers(kos="1.2.x;DROP"), 400, "not a valid UID"),
    ]
    for client, p, headers, status, reason in cases:
        refusal(net, client, p, headers, status, reason)
    # An expired token (PSC says inactive; the token's own exp is past).
    short = net.token(lifetime=1)
    time.sleep(2.5)
    refusal(net, net.peer, path, net.headers(short), 401, "token expired")


def test_scope_follows_the_current_kos(net: Network, tmp_path: Path, dmp_simulator: Any) -> None:
    """A series the KOS does not list is invisible; a corrected report's new KOS replaces the
    old one (the old UID then opens nothing); a withdrawn report's KOS opens nothing."""
    study = net.exam.study_uid
    # A series added to the PACS after publication, fetched into the box: not in the KOS.
    late = synthetic_study("CT", 2, out_dir=tmp_path / "late", study_uid=study,
                           accession=net.exam.accession, patient_id=net.patient.ipp,
                           patient_name=f"{net.patient.family}^{net.patient.given}")
    late_series = pydicom.dcmread(late[0], stop_before_pixels=True).SeriesInstanceUID
    net.pacs.upload(late)
    retrieve_into_box(net.box, study)
    refusal(net, net.peer, f"/studies/{study}/series/{late_series}", net.headers(), 404,
            "not in the KOS")
    r = net.peer.get(f"{net.base}/studies/{study}/series",
                     {**net.headers(), "Accept": "application/dicom+json"})
    assert late_series not in {x["0020000E"]["Value"][0] for x in json.loads(r["body"])}

    # The corrected report: a new KOS version (which lists the late series too).
    assert send(net.box, oru(net.patient, net.author, net.exam, status="C")) == "AA"
    wait_state(net.box, study, ("published", "failed", "quarantined"))
    (new,) = published_kos(dmp_simulator, study)
    assert new.sop_instance_uid != net.kos_uid
    refusal(net, net.peer, f"/studies/{study}/series/{late_series}", net.headers(), 404,
            "replaced by a newer version")
    r = net.peer.get(f"{net.base}/studies/{study}/series/{late_series}",
                     net.headers(kos=new.sop_instance_uid))
    assert r["status"] == 200 and len(parts(r)) == 2

    # The withdrawn report: its KOS opens nothing.
    assert send(net.box, oru(net.patient, net.author, net.exam, status="D")) == "AA"
    wait_state(net.box, study, ("withdrawn", "failed"))
    refusal(net, net.peer, f"/studies/{study}/series/{late_series}",
            net.headers(kos=new.sop_instance_uid), 404, "KOS withdrawn")


def test_health_shows_whitelist_and_psc(net: Network) -> None:
    status, health = net.box.health()
    assert status == 200
    assert health["components"]["whitelist"]["status"] == "ok"
    assert health["components"]["whitelist"]["domains"] == 1
    assert health["components"]["psc"]["status"] == "ok"
    # Without the admin token: ready or not, nothing more.
    with urllib.request.urlopen(f"https://localhost:{net.box.http}/healthz",
                                context=net.box.tls_context, timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
