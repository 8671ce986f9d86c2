"""Request bodies and answer parsing of the DMP transactions: ITI-41, ITI-18, ITI-43, ITI-57, TD0.2.

Pure functions over lxml elements; the network lives in :mod:`appliance.dmp.client`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from . import codes as C
from .codes import NS, Code
from .errors import (
    RETRYABLE_REGISTRY_CODES,
    DmpPermanentError,
    DmpResponseError,
    DmpRetryableError,
    RegistryError,
)
from .soap import SOAP, SoapMessage, xop_include

RIM, RS, LCM, QUERY, XDS, HL7 = NS["rim"], NS["rs"], NS["lcm"], NS["query"], NS["xds"], NS["hl7"]
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


# ----- requests -----

def provide_and_register(objects: etree._Element, documents: list[tuple[str, str]]
                         ) -> etree._Element:
    """ITI-41 body; ``documents`` are (symbolic id, MTOM Content-ID) pairs."""
    req = etree.Element(f"{{{XDS}}}ProvideAndRegisterDocumentSetRequest",
                        nsmap={"xds": XDS, "lcm": LCM, "rim": RIM})
    etree.SubElement(req, f"{{{LCM}}}SubmitObjectsRequest").append(objects)
    for doc_id, cid in documents:
        xop_include(etree.SubElement(req, f"{{{XDS}}}Document", id=doc_id), cid)
    return req


def submit_objects(objects: etree._Element) -> etree._Element:
    """ITI-57 body."""
    req = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    req.append(objects)
    return req


def quote(value: str) -> str:
    """A stored-query string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def quoted_list(values: list[str] | tuple[str, ...]) -> str:
    return "(" + ",".join(quote(v) for v in values) + ")"


def stored_query(query_id: str, params: dict[str, str | list[str]], return_type: str
                 ) -> etree._Element:
    """ITI-18 body; a list value becomes several ``Value`` elements (AND of ORs)."""
    if return_type not in ("ObjectRef", "LeafClass"):
        raise ValueError("return_type must be ObjectRef or LeafClass")
    req = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, f"{{{QUERY}}}ResponseOption", returnComposedObjects="true",
                     returnType=return_type)
    q = etree.SubElement(req, f"{{{RIM}}}AdhocQuery", id=query_id)
    for name, value in params.items():
        slot = etree.SubElement(q, f"{{{RIM}}}Slot", name=name)
        vl = etree.SubElement(slot, f"{{{RIM}}}ValueList")
        for v in ([value] if isinstance(value, str) else value):
            etree.SubElement(vl, f"{{{RIM}}}Value").text = v
    return req


def retrieve_request(repository_id: str, document_uid: str) -> etree._Element:
    req = etree.Element(f"{{{XDS}}}RetrieveDocumentSetRequest", nsmap={"xds": XDS})
    d = etree.SubElement(req, f"{{{XDS}}}DocumentRequest")
    etree.SubElement(d, f"{{{XDS}}}RepositoryUniqueId").text = repository_id
    etree.SubElement(d, f"{{{XDS}}}DocumentUniqueId").text = document_uid
    return req


def access_check(ins: str, oid: str, sender_id: str, sender_name: str,
                 now: datetime | None = None) -> etree._Element:
    """TD0.2 body: PRPA_IN201307UV02, reasonCode TEST_EXST (does the record exist, may I read)."""
    now = now or datetime.now(UTC)

    def h(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, f"{{{HL7}}}{tag}", attrs)

    msg = etree.Element(f"{{{HL7}}}PRPA_IN201307UV02", ITSVersion="XML_1.0", nsmap={None: HL7})
    h(msg, "id", root=sender_id, extension=str(uuid.uuid4()))
    h(msg, "creationTime", value=now.astimezone(UTC).strftime("%Y%m%d%H%M%S"))
    h(msg, "interactionId", root="2.16.840.1.113883.1.6", extension="PRPA_IN201307UV02")
    h(msg, "processingCode", code="P")
    h(msg, "processingModeCode", code="T")
    h(msg, "acceptAckCode", code="AL")
    rcv = h(h(msg, "receiver", typeCode="RCV"), "device", classCode="DEV",
            determinerCode="INSTANCE")
    h(rcv, "id", root="1.2.250.1.213.4.1.1.1")
    h(rcv, "softwareName").text = "DMP"
    snd = h(h(msg, "sender", typeCode="SND"), "device", classCode="DEV",
            determinerCode="INSTANCE")
    h(snd, "id", root=sender_id)
    h(snd, "softwareName").text = sender_name
    cap = h(msg, "controlActProcess", classCode="CACT", moodCode="EVN")
    h(cap, "reasonCode", code="TEST_EXST", codeSystem=C.ACCESS_REASON_SYSTEM,
      displayName="Test d'existence de dossier")
    qp = h(cap, "queryByParameter")
    h(qp, "queryId", root=sender_id, extension=str(uuid.uuid4()))
    h(qp, "statusCode", code="new")
    pid = h(h(qp, "parameterList"), "patientIdentifier")
    h(pid, "value", root=oid, extension=ins)
    h(pid, "semanticsText").text = "Patient.id"
    return msg


# ----- answers -----

def check_fault(msg: SoapMessage) -> None:
    """Raise the classified error of a SOAP Fault body, if it is one."""
    body = msg.envelope.find(f"{{{SOAP}}}Body")
    fault = None if body is None else body.find(f"{{{SOAP}}}Fault")
    if fault is None:
        return
    code = fault.findtext(f"{{{SOAP}}}Code/{{{SOAP}}}Value", "").strip()
    sub = fault.findtext(f"{{{SOAP}}}Code/{{{SOAP}}}Subcode/{{{SOAP}}}Value", "").strip()
    reason = " ".join(t.strip() for t in fault.xpath(
        "s:Reason/s:Text/text()", namespaces={"s": SOAP})).strip()
    detail = sub.split(":")[-1] if sub else code.split(":")[-1] or "SoapFault"
    if code.endswith("Receiver"):
        raise DmpRetryableError(f"DMP SOAP fault {detail}: {reason}", code=detail, text=reason)
    raise DmpPermanentError(detail, reason or "SOAP fault")


def registry_errors(container: etree._Element) -> tuple[RegistryError, ...]:
    return tuple(RegistryError(
        code=e.get("errorCode", ""), text=(e.get("codeContext") or e.text or "").strip(),
        severity=e.get("severity", ""), location=e.get("location", ""))
        for e in container.iter(f"{{{RS}}}RegistryError"))


def check_status(el: etree._Element) -> tuple[RegistryError, ...]:
    """Raise on a Failure status; return the warnings of a Success or PartialSuccess."""
    status = el.get("status", "")
    errors = registry_errors(el)
    if status in (SUCCESS, PARTIAL):
        return errors
    if status != FAILURE:
        raise DmpResponseError(f"unknown response status {status!r}")
    real = [e for e in errors if not e.severity.endswith("Warning")] or list(errors)
    if not real:
        raise DmpPermanentError("XDSRegistryError", "Failure without a RegistryError")
    first = real[0]
    if all(e.code in RETRYABLE_REGISTRY_CODES for e in real):
        raise DmpRetryableError(f"{first.code}: {first.text}", code=first.code, text=first.text)
    raise DmpPermanentError(first.code, first.text, tuple(real))


def registry_response(msg: SoapMessage) -> tuple[RegistryError, ...]:
    check_fault(msg)
    body = msg.body
    if body.tag != f"{{{RS}}}RegistryResponse":
        raise DmpResponseError(f"expected rs:RegistryResponse, got {body.tag!r}")
    return check_status(body)


@dataclass(frozen=True)
class DocumentEntry:
    """A DocumentEntry as the registry returns it (LeafClass)."""

    entry_uuid: str
    unique_id: str
    status: str
    mime_type: str
    patient_id: str
    repository_id: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    event_codes: tuple[Code, ...] = ()
    confidentiality: tuple[Code, ...] = ()
    reference_ids: tuple[str, ...] = ()
    creation_time: str = ""
    service_start: str = ""
    service_stop: str = ""
    size: int | None = None
    hash: str = ""
    title: str = ""
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def accession(self) -> str | None:
        for r in self.reference_ids:
            if r.endswith("^urn:ihe:iti:xds:2013:accession"):
                return r.split("^", 1)[0]
        return None

    @property
    def study_uid(self) -> str | None:
        for r in self.reference_ids:
            if r.endswith("^urn:ihe:iti:xds:2016:studyInstanceUID"):
                return r.split("^", 1)[0]
        return None


def _slots(el: etree._Element) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for s in el.findall(f"{{{RIM}}}Slot"):
        out[s.get("name", "")] = tuple((v.text or "") for v in s.iter(f"{{{RIM}}}Value"))
    return out


def _codes(el: etree._Element, scheme: str) -> tuple[Code, ...]:
    out = []
    for c in el.findall(f"{{{RIM}}}Classification"):
        if c.get("classificationScheme") != scheme:
            continue
        system = _slots(c).get("codingScheme", ("",))
        name = c.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
        out.append(Code(c.get("nodeRepresentation", ""), system[0] if system else "",
                        "" if name is None else name.get("value", "")))
    return tuple(out)


def _external(el: etree._Element, scheme: str) -> str:
    for e in el.findall(f"{{{RIM}}}ExternalIdentifier"):
        if e.get("identificationScheme") == scheme:
            return str(e.get("value", ""))
    return ""


def document_entry(eo: etree._Element) -> DocumentEntry:
    slots = _slots(eo)

    def one(name: str) -> str:
        v = slots.get(name, ())
        return v[0] if v else ""

    def first(codes: tuple[Code, ...]) -> Code | None:
        return codes[0] if codes else None

    size = one("size")
    title = eo.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
    entry_uuid = eo.get("id", "")
    if not entry_uuid:
        raise DmpResponseError("ExtrinsicObject without an id")
    return DocumentEntry(
        entry_uuid=entry_uuid, unique_id=_external(eo, C.DE_UNIQUE_ID),
        status=eo.get("status", ""), mime_type=eo.get("mimeType", ""),
        patient_id=_external(eo, C.DE_PATIENT_ID), repository_id=one("repositoryUniqueId"),
        class_code=first(_codes(eo, C.DE_CLASS)), type_code=first(_codes(eo, C.DE_TYPE)),
        format_code=first(_codes(eo, C.DE_FORMAT)), event_codes=_codes(eo, C.DE_EVENT),
        confidentiality=_codes(eo, C.DE_CONFIDENTIALITY),
        reference_ids=slots.get(C.REFERENCE_ID_LIST, ()), creation_time=one("creationTime"),
        service_start=one("serviceStartTime"), service_stop=one("serviceStopTime"),
        size=int(size) if size.isdigit() else None, hash=one("hash"),
        title="" if title is None else title.get("value", ""), slots=slots)


def query_response(msg: SoapMessage) -> tuple[list[DocumentEntry], list[str]]:
    """(LeafClass entries, ObjectRef ids) of an ITI-18 answer."""
    check_fault(msg)
    body = msg.body
    if body.tag == f"{{{RS}}}RegistryResponse":  # some registries answer errors this way
        check_status(body)
        raise DmpResponseError("query answered by a bare RegistryResponse")
    if body.tag != f"{{{QUERY}}}AdhocQueryResponse":
        raise DmpResponseError(f"expected query:AdhocQueryResponse, got {body.tag!r}")
    check_status(body)
    rol = body.find(f"{{{RIM}}}RegistryObjectList")
    if rol is None:
        return [], []
    entries = [document_entry(eo) for eo in rol.findall(f"{{{RIM}}}ExtrinsicObject")]
    refs = [r.get("id", "") for r in rol.findall(f"{{{RIM}}}ObjectRef")]
    return entries, refs


def retrieve_response(msg: SoapMessage, document_uid: str) -> bytes:
    check_fault(msg)
    body = msg.body
    if body.tag == f"{{{RS}}}RegistryResponse":  # some repositories answer errors this way
        check_status(body)
        raise DmpResponseError("retrieve answered by a bare RegistryResponse")
    if body.tag != f"{{{XDS}}}RetrieveDocumentSetResponse":
        raise DmpResponseError(f"expected xds:RetrieveDocumentSetResponse, got {body.tag!r}")
    rr = body.find(f"{{{RS}}}RegistryResponse")
    if rr is None:
        raise DmpResponseError("RetrieveDocumentSetResponse without a RegistryResponse")
    check_status(rr)
    for dr in body.findall(f"{{{XDS}}}DocumentResponse"):
        if dr.findtext(f"{{{XDS}}}DocumentUniqueId", "").strip() == document_uid:
            doc = dr.find(f"{{{XDS}}}Document")
            if doc is None:
                raise DmpResponseError("DocumentResponse without a Document")
            return msg.resolve(doc)
    raise DmpPermanentError("XDSDocumentUniqueIdError",
                            "the DMP answered without the requested document")


@dataclass(frozen=True)
class AccessStatus:
    """TD0.2 answer: does the record exist, is the box authorised, has the patient opposed."""

    exists: bool
    authorization: str        # e.g. VALIDE (the box may read); empty when absent
    opposition: str           # "yes" / "no" / "unknown" (break-glass refusal by the patient)

    @property
    def may_read(self) -> bool:
        return self.exists and self.authorization == "VALIDE" and self.opposition != "yes"


def access_response(msg: SoapMessage) -> AccessStatus:
    """Parse PRPA_IN201306UV02. [inf] The DMPi guide was not available: the answer is read as a
    queryResponseCode (OK/NF) plus ``subjectOf/administrativeObservation`` code/value pairs
    (AUTORISATION, OPPOSITION), which is what the simulator sends."""
    check_fault(msg)
    body = msg.body
    if body.tag != f"{{{HL7}}}PRPA_IN201306UV02":
        raise DmpResponseError(f"expected hl7:PRPA_IN201306UV02, got {body.tag!r}")
    ns = {"h": HL7}
    ack = body.xpath("string(h:acknowledgement/h:typeCode/@code)", namespaces=ns)
    if ack and ack not in ("AA", "CA"):
        text = body.xpath("string(h:acknowledgement/h:acknowledgementDetail/h:text)",
                          namespaces=ns).strip()
        code = body.xpath("string(h:acknowledgement/h:acknowledgementDetail/h:code/@code)",
                          namespaces=ns) or ack
        raise DmpPermanentError(str(code), text or "access check refused")
    rc = body.xpath("string(h:controlActProcess/h:queryAck/h:queryResponseCode/@code)",
                    namespaces=ns)
    if rc not in ("OK", "NF"):
        raise DmpResponseError(f"access check answer with queryResponseCode {rc!r}")
    obs: dict[str, str] = {}
    for o in body.xpath("//h:administrativeObservation", namespaces=ns):
        code = o.xpath("string(h:code/@code)", namespaces=ns)
        value = o.xpath("string(h:value/@code)", namespaces=ns) or o.xpath(
            "string(h:value/@value)", namespaces=ns)
        obs[str(code)] = str(value)
    return AccessStatus(exists=rc == "OK", authorization=obs.get("AUTORISATION", ""),
                        opposition=obs.get("OPPOSITION", "unknown").lower())


_UUID = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")


def is_entry_uuid(value: str) -> bool:
    return bool(_UUID.fullmatch(value))
