"""A simulated RIS: builds validated imaging reports (HL7 v2.5 ORU^R01 carrying a CDA R2) for a
study, shaped like the ANS referencing messages, and sends them over MLLP.

The demo and benchmarks use it so they need no ANS data; the conformance tests use the ANS
messages themselves. The INS is fictional but valid (NIR with its control key), under the test
OID 1.2.250.1.213.1.4.10 by default.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass, field

from lxml import etree

CDA_NS = "urn:hl7-org:v3"
PS3_20 = "urn:dicom-org:ps3-20"
TEST_INS_OID = "1.2.250.1.213.1.4.10"


def nir_key(nir13: str) -> str:
    """The two-digit control key of a 13-character NIR (Corsica 2A/2B as 19/18)."""
    digits = nir13.replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


@dataclass
class Patient:
    nir13: str = "1840375123456"
    ins_oid: str = TEST_INS_OID
    ipp: str = "IPP-DEMO-1"
    ipp_authority: str = "AUT-DEMO"
    ipp_oid: str = "1.2.250.1.999.9.1"
    family: str = "DEMO"
    given: str = "CAMILLE"
    birth_date: str = "19840312"
    sex: str = "F"

    @property
    def ins(self) -> str:
        return self.nir13 + nir_key(self.nir13)


@dataclass
class Professional:
    rpps: str = "810000000001"
    family: str = "RADIOLOGUE"
    given: str = "Alex"
    org_id: str = "499700367909006"
    org_name: str = "Centre de radiologie demo"


@dataclass
class Exam:
    study_uid: str
    accession: str
    order: str = field(default_factory=lambda: "ORD" + uuid.uuid4().hex[:8].upper())
    accession_root: str = "1.2.250.1.999.9.2"
    order_root: str = "1.2.250.1.999.9.3"
    modality: str = "CT"
    region: tuple[str, str] = ("774007", "structure de la tête et/ou du cou")
    loinc: tuple[str, str] = ("24727-0", "CT Head W contrast IV")
    facility: str = "SA08"
    practice: str = "AMBULATOIRE"


def _e(parent: etree._Element, tag: str, text: str | None = None, ns: str = CDA_NS,
       **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{tag}", {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def cda(patient: Patient, author: Professional, exam: Exam,
        when: dt.datetime | None = None, replaces: str | None = None) -> bytes:
    """A CDA R2 level 1 imaging report (nonXMLBody: a tiny PDF) for ``exam``."""
    when = when or dt.datetime.now(dt.timezone(dt.timedelta(hours=1)))
    ts = when.strftime("%Y%m%d%H%M%S%z")
    doc = etree.Element(f"{{{CDA_NS}}}ClinicalDocument", nsmap={None: CDA_NS, "ps3-20": PS3_20})
    _e(doc, "realmCode", code="FR")
    _e(doc, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    doc_id = str(uuid.uuid4().int)[:20]
    _e(doc, "id", root="1.2.250.1.999.9.4", extension=doc_id)
    _e(doc, "code", code="18748-4", displayName="CR d'imagerie médicale",
       codeSystem="2.16.840.1.113883.6.1")
    _e(doc, "title", "Compte rendu d'imagerie")
    _e(doc, "effectiveTime", value=ts)
    _e(doc, "confidentialityCode", code="N", codeSystem="2.16.840.1.113883.5.25")
    _e(doc, "languageCode", code="fr-FR")
    _e(doc, "setId", root="1.2.250.1.999.9.5", extension=exam.accession)
    _e(doc, "versionNumber", value="2" if replaces else "1")
    role = _e(_e(doc, "recordTarget"), "patientRole")
    _e(role, "id", root=patient.ins_oid, extension=patient.ins)
    _e(role, "id", root=patient.ipp_oid, extension=patient.ipp)
    pat = _e(role, "patient", classCode="PSN")
    name = _e(pat, "name")
    _e(name, "family", patient.family, qualifier="BR")
    _e(name, "given", patient.given, qualifier="BR")
    _e(pat, "administrativeGenderCode", code=patient.sex, codeSystem="2.16.840.1.113883.5.1")
    _e(pat, "birthTime", value=patient.birth_date)

    def professional(entity: etree._Element) -> None:
        _e(entity, "id", root="1.2.250.1.71.4.2.1", extension=author.rpps)
        person = _e(_e(entity, "assignedPerson"), "name")
        _e(person, "given", author.given)
        _e(person, "family", author.family)
        org = _e(entity, "representedOrganization")
        _e(org, "id", root="1.2.250.1.71.4.2.2", extension=author.org_id)
        _e(org, "name", author.org_name)
        _e(org, "standardIndustryClassCode", code=exam.practice,
           codeSystem="1.2.250.1.213.1.1.4.9")

    au = _e(doc, "author")
    _e(au, "time", value=ts)
    professional(_e(au, "assignedAuthor"))
    custodian = _e(_e(_e(doc, "custodian"), "assignedCustodian"), "representedCustodianOrganization")
    _e(custodian, "id", root="1.2.250.1.71.4.2.2", extension=author.org_id)
    la = _e(doc, "legalAuthenticator")
    _e(la, "time", value=ts)
    _e(la, "signatureCode", code="S")
    professional(_e(la, "assignedEntity"))
    order = _e(_e(doc, "inFulfillmentOf"), "order")
    _e(order, "id", root=exam.order_root, extension=exam.order)
    _e(order, "accessionNumber", ns=PS3_20, root=exam.accession_root, extension=exam.accession)
    ev = _e(_e(doc, "documentationOf"), "serviceEvent", classCode="ACT")
    _e(ev, "id", root=exam.study_uid)
    code = _e(ev, "code", code=exam.loinc[0], displayName=exam.loinc[1],
              codeSystem="2.16.840.1.113883.6.1")
    mod = _e(code, "translation", code=exam.modality, codeSystem="1.2.840.10008.2.16.4")
    _e(_e(mod, "qualifier"), "name", code="121139", codeSystem="1.2.840.10008.2.16.4")
    reg = _e(code, "translation", code=exam.region[0], displayName=exam.region[1],
             codeSystem="2.16.840.1.113883.6.96")
    _e(_e(reg, "qualifier"), "name", code="39111-0", codeSystem="2.16.840.1.113883.6.1")
    times = _e(ev, "effectiveTime")
    _e(times, "low", value=(when - dt.timedelta(minutes=30)).strftime("%Y%m%d%H%M%S%z"))
    _e(times, "high", value=ts)
    if replaces:
        rel = _e(doc, "relatedDocument", typeCode="RPLC")
        _e(_e(rel, "parentDocument"), "id", root="1.2.250.1.999.9.4", extension=replaces)
    enc = _e(_e(doc, "componentOf"), "encompassingEncounter")
    _e(_e(enc, "effectiveTime"), "low", value=ts)
    fac = _e(_e(enc, "location"), "healthCareFacility")
    _e(fac, "code", code=exam.facility, codeSystem="1.2.250.1.71.4.2.4")
    body = _e(_e(_e(doc, "component"), "nonXMLBody"), "text", mediaType="application/pdf",
              representation="B64")
    body.text = base64.b64encode(b"%PDF-1.4\n% demo report\n%%EOF\n").decode()
    return etree.tostring(doc, xml_declaration=True, encoding="UTF-8")


def oru(patient: Patient, author: Professional, exam: Exam, control_id: str | None = None,
        status: str = "F", cda_bytes: bytes | None = None, flags: dict[str, bool] | None = None
        ) -> str:
    """An ORU^R01 v2.5 carrying the CDA; ``status`` F publish, C correct, D delete."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    control_id = control_id or uuid.uuid4().hex[:20]
    doc = base64.b64encode(cda_bytes or cda(patient, author, exam)).decode()
    order_control = "CA" if status == "D" else "NW"
    flags = {"MASQUE_PS": False, "INVISIBLE_PATIENT": False, "INVISIBLE_REP_LEGAUX": False,
             "CONNEXION_SECRETE": False, "MODIF_CONF_CODE": False, "DESTDMP": True,
             "DESTMSSANTEPS": False, "DESTMSSANTEPAT": False, "ACK_RECEPTION": False,
             "ACK_LECTURE_MSS": False, **(flags or {})}
    segments = [
        f"MSH|^~\\&|RIS_DEMO|SITE_DEMO|DRIMBOX|SITE_DEMO|{now}||ORU^R01^ORU_R01|{control_id}|P|"
        "2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2",
        f"PID|||{patient.ins}^^^ASIP-SANTE-INS-NIR&{patient.ins_oid}&ISO^INS~{patient.ipp}^^^"
        f"{patient.ipp_authority}&{patient.ipp_oid}&ISO^PI||{patient.family}^{patient.given}^^^^^L"
        f"||{patient.birth_date}|{patient.sex}|||||||||||||||||||||||N|VALI",
        f"ORC|{order_control}|",
        f"OBR|1|{exam.order}|{exam.accession}|18748-4^CR d'imagerie médicale^LN|||{now}|||||||||"
        f"{author.rpps}^{author.family}^{author.given}||{exam.accession}|||||||F",
        f"OBX|1|ED|18748-4^CR d'imagerie médicale^LN||^TEXT^XML^Base64^{doc}||||||{status}|",
        f"PRT||UC||SB^^participation|{author.rpps}^{author.family}^{author.given}^^^^^^"
        f"ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS|||{author.org_name}^^^^^ASIP-SANTE-ST&"
        f"1.2.250.1.71.4.2.2&ISO^FINEG^^^{author.org_id}",
    ]
    for i, (flag, value) in enumerate(flags.items(), start=2):
        segments.append(f"OBX|{i}|CE|{flag}^{flag}^MetaDMPMSS||{'Y' if value else 'N'}"
                        "^^expandedYes-NoIndicator||||||F|")
    return "\r".join(segments) + "\r"
