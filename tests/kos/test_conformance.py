"""KOS built from the identifiers of the ANS referencing reports (their CDA headers).

The ANS data set carries no KOS we may copy, so this checks the other way round: the real INS,
OIDs, accession and order numbers of every ANS report fit a conformant manifest, where
PROTOCOLS.md §2.3 puts them.
"""

from __future__ import annotations

import base64
import io
from datetime import date
from pathlib import Path

import hl7
import pydicom
import pytest
from lxml import etree

from appliance.dicom.kos import KosRequest, Patient, Study, build_kos, parse_kos

from .conftest import PUBLIC_URL, make_instances

HL7_DIR = "referencement-drimbox/hl7v2-derived"


def ans_reports(conformance_dir: Path) -> list[Path]:
    files = sorted((conformance_dir / HL7_DIR).glob("*/*.hl7"))
    if not files:
        pytest.skip(f"no HL7 report under {conformance_dir / HL7_DIR}")
    return files


def cda_of(message: Path) -> etree._Element:
    msg = hl7.parse(message.read_bytes().decode("utf-8"))  # keep the \r separators
    obx = next(s for s in msg if str(s[0]) == "OBX")
    data = base64.b64decode(str(obx[5]).split("^")[-1])
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    return etree.fromstring(data, parser)


def one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path)
    assert found, path
    return found[0]


def request_from(cda: etree._Element) -> tuple[KosRequest, dict[str, str]]:
    ln = "*[local-name()='{}']".format
    role = one(cda, f"{ln('recordTarget')}/{ln('patientRole')}")
    ins = one(role, ln("id"))
    person = one(role, ln("patient"))
    name = one(person, ln("name"))
    order = one(cda, f"{ln('inFulfillmentOf')}/{ln('order')}")
    placer = one(order, ln("id"))
    accession = one(order, ln("accessionNumber"))
    study_uid = one(cda, f"{ln('documentationOf')}/{ln('serviceEvent')}/{ln('id')}").get("root")
    birth = one(person, ln("birthTime")).get("value")
    facts = {"ins": ins.get("extension"), "ins_oid": ins.get("root"),
             "accession": accession.get("extension"), "accession_oid": accession.get("root"),
             "order": placer.get("extension"), "order_oid": placer.get("root"),
             "study_uid": study_uid}
    req = KosRequest(
        patient=Patient(
            ins=facts["ins"], ins_oid=facts["ins_oid"],
            family_name=one(name, ln("family")).text.strip(),
            given_names=one(name, ln("given")).text.strip(),
            birth_date=date(int(birth[:4]), int(birth[4:6]), int(birth[6:8])),
            sex=one(person, ln("administrativeGenderCode")).get("code"),
        ),
        study=Study(study_uid=study_uid, accession_number=facts["accession"],
                    accession_issuer_oid=facts["accession_oid"],
                    placer_order_number=facts["order"], placer_order_issuer_oid=facts["order_oid"]),
        instances=make_instances([("CT", 3), ("CT", 2)]),
        public_url=PUBLIC_URL,
    )
    return req, facts


def test_every_ans_report_yields_a_conformant_manifest(conformance_dir, dciodvfy):
    reports = ans_reports(conformance_dir)
    for report in reports:
        req, facts = request_from(cda_of(report))
        built = build_kos(req)
        verdict = dciodvfy(built.data)
        assert verdict.errors == [], f"{report.name}: {verdict.output}"

        m = parse_kos(built.data)
        assert (m.patient_id, m.patient_id_issuer_oid) == (facts["ins"], facts["ins_oid"])
        assert m.study_uid == facts["study_uid"]
        assert all(u and f"/studies/{facts['study_uid']}/series/" in u
                   for u in m.retrieve_urls.values())
        rr = pydicom.dcmread(io.BytesIO(built.data)).ReferencedRequestSequence[0]
        assert rr.AccessionNumber == facts["accession"]
        assert rr.IssuerOfAccessionNumberSequence[0].UniversalEntityID == facts["accession_oid"]
        assert rr.PlacerOrderNumberImagingServiceRequest == facts["order"]
        assert rr.OrderPlacerIdentifierSequence[0].UniversalEntityID == facts["order_oid"]
    assert len(reports) >= 9  # the nine ANS messages of the referencing data set
