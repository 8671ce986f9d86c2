"""Extraction of the CDA R2 imaging-report fields the box needs (PROTOCOLS.md §2.2).

The CDA is untrusted input from the RIS: it is parsed with a hardened lxml parser (no DTD, no
entities, no network, no huge trees), a size limit, and a document with a DOCTYPE is refused
outright (a CDA never has one; refusing it closes the entity-expansion door for good).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from appliance import xmlsafe
from appliance.hl7.errors import CdaError, ErrorCode

NS = {"cda": "urn:hl7-org:v3", "ps3-20": "urn:dicom-org:ps3-20"}
DEFAULT_MAX_CDA_BYTES = 12 * 1024 * 1024  # a CR with an embedded multi-page PDF is ~0.3-5 MB

# INS OIDs: NIR prod, NIA (temporary national id), NIR test, NIR demo (PROTOCOLS.md §6, §7.10).
INS_OIDS = {
    "1.2.250.1.213.1.4.8": "prod",
    "1.2.250.1.213.1.4.9": "nia",
    "1.2.250.1.213.1.4.10": "test",
    "1.2.250.1.213.1.4.11": "demo",
}
RPPS_OID = "1.2.250.1.71.4.2.1"
ORGANISATION_OID = "1.2.250.1.71.4.2.2"
DICOM_CODES_OID = "1.2.840.10008.2.16.4"
CCAM_OID = "1.2.250.1.213.2.5"
MODALITY_QUALIFIER = "121139"  # DCM "Modality"
REGION_QUALIFIER = "39111-0"  # LOINC "Body site"


@dataclass(frozen=True)
class InstanceId:
    """An HL7 v3 II: root (an OID or UUID) and optional extension."""

    root: str
    extension: str = ""


@dataclass(frozen=True)
class Code:
    code: str
    system: str = ""
    display: str = ""


@dataclass(frozen=True)
class Professional:
    """An author or legal authenticator: RPPS id and the organisation they act for."""

    id: InstanceId | None
    family: str = ""
    given: str = ""
    organisation_id: InstanceId | None = None
    organisation_name: str = ""
    time: str = ""


@dataclass(frozen=True)
class CdaReport:
    document_id: InstanceId
    title: str
    code: Code | None
    effective_time: str
    confidentiality: Code | None
    set_id: InstanceId | None
    version: str
    replaces: InstanceId | None  # relatedDocument typeCode="RPLC" parentDocument/id
    ins: str
    ins_oid: str
    ipp: str
    ipp_oid: str
    birth_family: str  # family qualifier BR (or the first family)
    given: tuple[str, ...]  # given names of the birth identity
    used_family: str  # family qualifier CL, empty when absent
    birth_time: str
    sex: str
    author: Professional | None
    legal_authenticator: Professional | None
    order_id: InstanceId | None
    accession: InstanceId | None
    study_uid: str
    act: Code | None  # serviceEvent/code (LOINC)
    translations: tuple[Code, ...] = field(default=())
    modality: Code | None = None
    region: Code | None = None
    ccam: Code | None = None
    service_start: str = ""
    service_stop: str = ""
    practice_setting: Code | None = None
    facility_type: Code | None = None

    @property
    def ins_environment(self) -> str:
        return INS_OIDS.get(self.ins_oid, "")


def parse_cda(data: bytes, max_bytes: int = DEFAULT_MAX_CDA_BYTES) -> CdaReport:
    """Parse a CDA R2 document into a ``CdaReport``; raise ``CdaError`` with a clear reason."""
    if not isinstance(data, (bytes, bytearray)):
        raise CdaError("document must be bytes")
    if len(data) > max_bytes:
        raise CdaError(f"document is {len(data)} bytes, the limit is {max_bytes}")
    if not data.strip():
        raise CdaError("document is empty")
    try:
        root = xmlsafe.parse(bytes(data), limit=max_bytes)
    except xmlsafe.UnsafeXmlError as e:
        # lxml messages hold a line/column and the libxml2 reason, never document text.
        raise CdaError(f"not well-formed or unsafe XML ({_short(str(e))})") from None
    if root.tag != "{urn:hl7-org:v3}ClinicalDocument":
        raise CdaError("root element is not urn:hl7-org:v3 ClinicalDocument")
    return _extract(root)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- small XPath helpers -------------------------------------------------------------------


def _first(node: etree._Element | None, path: str) -> etree._Element | None:
    if node is None:
        return None
    found = node.xpath(path, namespaces=NS)
    return found[0] if isinstance(found, list) and found and isinstance(
        found[0], etree._Element) else None


def _all(node: etree._Element | None, path: str) -> list[etree._Element]:
    if node is None:
        return []
    found = node.xpath(path, namespaces=NS)
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


def _text(node: etree._Element | None) -> str:
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def _attr(node: etree._Element | None, name: str) -> str:
    return (node.get(name) or "").strip() if node is not None else ""


def _ii(node: etree._Element | None) -> InstanceId | None:
    root = _attr(node, "root")
    return InstanceId(root, _attr(node, "extension")) if root else None


def _code(node: etree._Element | None) -> Code | None:
    code = _attr(node, "code")
    if not code:
        return None
    return Code(code, _attr(node, "codeSystem"), _attr(node, "displayName"))


def _professional(entity: etree._Element | None, time: str) -> Professional | None:
    if entity is None:
        return None
    ids = _all(entity, "cda:id")
    rpps = next((i for i in ids if _attr(i, "root") == RPPS_OID), ids[0] if ids else None)
    org = _first(entity, "cda:representedOrganization")
    return Professional(
        id=_ii(rpps),
        family=_text(_first(entity, "cda:assignedPerson/cda:name/cda:family")),
        given=_text(_first(entity, "cda:assignedPerson/cda:name/cda:given")),
        organisation_id=_ii(_first(org, "cda:id")) if org is not None else None,
        organisation_name=_text(_first(org, "cda:name")) if org is not None else "",
        time=time,
    )


# --- extraction ---------------------------------------------------------------------------


def _extract(doc: etree._Element) -> CdaReport:
    document_id = _ii(_first(doc, "cda:id"))
    if document_id is None:
        raise CdaError("ClinicalDocument/id (document id) is missing",
                       ErrorCode.REQUIRED_FIELD_MISSING)

    patient_role = _first(doc, "cda:recordTarget/cda:patientRole")
    if patient_role is None:
        raise CdaError("recordTarget/patientRole is missing", ErrorCode.REQUIRED_FIELD_MISSING)
    ids = [i for i in (_ii(e) for e in _all(patient_role, "cda:id")) if i is not None]
    ins = next((i for i in ids if i.root in INS_OIDS and i.extension), None)
    if ins is None:
        raise CdaError("recordTarget/patientRole has no INS id (root 1.2.250.1.213.1.4.8/9/10/11)",
                       ErrorCode.REQUIRED_FIELD_MISSING)
    ipp = next((i for i in ids if i.root not in INS_OIDS and i.extension), None)

    patient = _first(patient_role, "cda:patient")
    names = _all(patient, "cda:name") if patient is not None else []
    families = [f for n in names for f in _all(n, "cda:family")]
    givens = [g for n in names for g in _all(n, "cda:given")]
    birth_family = next((f for f in families if _attr(f, "qualifier") == "BR"),
                        families[0] if families else None)
    used_family = next((f for f in families if _attr(f, "qualifier") == "CL"), None)
    birth_givens = [g for g in givens if _attr(g, "qualifier") in ("", "BR")] or givens

    author = _first(doc, "cda:author/cda:assignedAuthor")
    legal = _first(doc, "cda:legalAuthenticator/cda:assignedEntity")

    order = _first(doc, "cda:inFulfillmentOf/cda:order")
    # Several documentationOf may be present (official example); the study is the first
    # serviceEvent that carries an id.
    event = _first(doc, "cda:documentationOf/cda:serviceEvent[cda:id/@root]")
    if event is None:
        event = _first(doc, "cda:documentationOf/cda:serviceEvent")
    study_uid = _attr(_first(event, "cda:id"), "root") if event is not None else ""
    accession = _ii(_first(order, "ps3-20:accessionNumber")) if order is not None else None
    if not study_uid and accession is None:
        raise CdaError("neither a study UID (documentationOf/serviceEvent/id) nor an accession "
                       "number (inFulfillmentOf/order/accessionNumber) is present",
                       ErrorCode.REQUIRED_FIELD_MISSING)

    act_node = _first(event, "cda:code") if event is not None else None
    translations: list[Code] = []
    modality = region = ccam = None
    for t in _all(act_node, "cda:translation") if act_node is not None else []:
        code = _code(t)
        if code is None:
            continue
        translations.append(code)
        qualifier = _attr(_first(t, "cda:qualifier/cda:name"), "code")
        if qualifier == MODALITY_QUALIFIER or (not qualifier and code.system == DICOM_CODES_OID):
            modality = modality or code
        elif qualifier == REGION_QUALIFIER:
            region = region or code
        elif code.system == CCAM_OID:
            ccam = ccam or code

    practice = None
    if event is not None:
        practice = _code(_first(
            event, "cda:performer/cda:assignedEntity/cda:representedOrganization"
                   "/cda:standardIndustryClassCode"))
    if practice is None:  # the author's organisation carries it too in the ANS samples
        practice = _code(_first(doc, "cda:author/cda:assignedAuthor/cda:representedOrganization"
                                     "/cda:standardIndustryClassCode"))

    related = _first(doc, "cda:relatedDocument[@typeCode='RPLC']/cda:parentDocument/cda:id")

    return CdaReport(
        document_id=document_id,
        title=_text(_first(doc, "cda:title")),
        code=_code(_first(doc, "cda:code")),
        effective_time=_attr(_first(doc, "cda:effectiveTime"), "value"),
        confidentiality=_code(_first(doc, "cda:confidentialityCode")),
        set_id=_ii(_first(doc, "cda:setId")),
        version=_attr(_first(doc, "cda:versionNumber"), "value"),
        replaces=_ii(related),
        ins=ins.extension,
        ins_oid=ins.root,
        ipp=ipp.extension if ipp else "",
        ipp_oid=ipp.root if ipp else "",
        birth_family=_text(birth_family),
        given=tuple(_text(g) for g in birth_givens),
        used_family=_text(used_family),
        birth_time=_attr(_first(patient, "cda:birthTime"), "value") if patient is not None else "",
        sex=_attr(_first(patient, "cda:administrativeGenderCode"), "code")
        if patient is not None else "",
        author=_professional(author, _attr(_first(doc, "cda:author/cda:time"), "value")),
        legal_authenticator=_professional(
            legal, _attr(_first(doc, "cda:legalAuthenticator/cda:time"), "value")),
        order_id=_ii(_first(order, "cda:id")) if order is not None else None,
        accession=accession,
        study_uid=study_uid,
        act=_code(act_node),
        translations=tuple(translations),
        modality=modality,
        region=region,
        ccam=ccam,
        service_start=_attr(_first(event, "cda:effectiveTime/cda:low"), "value")
        if event is not None else "",
        service_stop=_attr(_first(event, "cda:effectiveTime/cda:high"), "value")
        if event is not None else "",
        practice_setting=practice,
        facility_type=_code(_first(
            doc, "cda:componentOf/cda:encompassingEncounter/cda:location"
                 "/cda:healthCareFacility/cda:code")),
    )
