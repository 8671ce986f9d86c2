"""XDS.b metadata of a KOS publication: SubmissionSet, KOS DocumentEntry, signature DocumentEntry
and their associations, with the slots and schemes of the ANS samples (PROTOCOLS.md §2.4).

The input is :class:`KosSubmission`, a typed record the source role fills from the CDA report and
the KOS. Nothing national is hard-coded here: the INS OID, the structure and the codes come in.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from lxml import etree

from . import codes as C
from .codes import Code
from .errors import SubmissionError

RIM = C.NS["rim"]
_INS = re.compile(r"\d{5}(?:\d{2}|2A|2B)\d{8}")
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9]\d*))+")
_HL7_SPECIAL = re.compile(r"[|^~\\&]")


def new_uid() -> str:
    """A fresh OID under 2.25 (UUID-derived, ITU-T X.667): no registered root needed."""
    return "2.25." + str(uuid.uuid4().int)


def _check_oid(what: str, value: str) -> None:
    if not _OID.fullmatch(value) or len(value) > 64:
        raise SubmissionError(f"{what}: {value!r} is not an OID of at most 64 characters")


def _check_text(what: str, value: str) -> None:
    if _HL7_SPECIAL.search(value):
        raise SubmissionError(f"{what} contains an HL7 delimiter (| ^ ~ \\ &)")


@dataclass(frozen=True)
class PatientId:
    """The patient's INS and the OID of its namespace (.8 production, .10 test, .11 demo, .9 NIA)."""

    ins: str
    oid: str

    def __post_init__(self) -> None:
        if not _INS.fullmatch(self.ins):
            raise SubmissionError("patient INS must be 15 characters (13-digit NIR/NIA + key)")
        if self.oid not in C.INS_OIDS:
            raise SubmissionError(f"patient INS OID {self.oid!r} is not one of "
                                  f"{', '.join(C.INS_OIDS)}")

    @property
    def xds(self) -> str:
        """``INS^^^&OID&ISO^NH``: the DMP patient identifier."""
        return f"{self.ins}^^^&{self.oid}&ISO^NH"

    @property
    def source(self) -> str:
        return f"{self.ins}^^^&{self.oid}&ISO^PI"


@dataclass(frozen=True)
class PatientInfo:
    """sourcePatientInfo: birth name and first given name, birth date ``yyyymmdd``, sex M/F/U."""

    family: str
    given: str
    birth_date: str
    sex: str

    def __post_init__(self) -> None:
        _check_text("patient name", self.family + self.given)
        if not re.fullmatch(r"\d{8}", self.birth_date):
            raise SubmissionError("patient birth date must be yyyymmdd")
        if self.sex not in ("M", "F", "U"):
            raise SubmissionError("patient sex must be M, F or U")


@dataclass(frozen=True)
class Person:
    """An XCN person: national identifier (RPPS-based, ``IDNPS``) and name."""

    id: str
    family: str
    given: str
    authority: str = C.RPPS_OID
    id_type: str = "IDNPS"
    name_type: str = "D"

    def __post_init__(self) -> None:
        if not self.id or not self.family:
            raise SubmissionError("a person needs an identifier and a family name")
        _check_text("person", self.id + self.family + self.given + self.id_type + self.name_type)
        _check_oid("person identifier authority", self.authority)

    @property
    def xcn(self) -> str:
        return (f"{self.id}^{self.family}^{self.given}^^^^^^&{self.authority}&ISO"
                f"^{self.name_type}^^^{self.id_type}")


@dataclass(frozen=True)
class Organization:
    """An XON organisation: name and national structure identifier (``IDNST``)."""

    name: str
    id: str
    authority: str = C.STRUCTURE_OID
    id_type: str = "IDNST"

    def __post_init__(self) -> None:
        if not self.name or not self.id:
            raise SubmissionError("an organisation needs a name and an identifier")
        _check_text("organisation", self.name + self.id + self.id_type)
        _check_oid("organisation identifier authority", self.authority)

    @property
    def xon(self) -> str:
        return f"{self.name}^^^^^&{self.authority}&ISO^{self.id_type}^^^{self.id}"


class ReferenceType(StrEnum):
    ACCESSION = "urn:ihe:iti:xds:2013:accession"
    STUDY_UID = "urn:ihe:iti:xds:2016:studyInstanceUID"
    ORDER = "urn:ihe:iti:xds:2013:order"


@dataclass(frozen=True)
class ReferenceId:
    """One referenceIdList entry: ``value^^^&root&ISO^type`` (accession, study UID, order)."""

    value: str
    root: str
    type: ReferenceType

    def __post_init__(self) -> None:
        if not self.value:
            raise SubmissionError("a reference id needs a value")
        _check_text("reference id", self.value)
        _check_oid("reference id issuer", self.root)

    @property
    def cxi(self) -> str:
        return f"{self.value}^^^&{self.root}&ISO^{self.type}"


def _utc(t: datetime) -> str:
    if t.tzinfo is None:
        raise SubmissionError("times must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class KosSubmission:
    """Everything the DMP needs to index one KOS manifest of an imaging exam."""

    patient: PatientId
    patient_info: PatientInfo
    author: Person
    institution: Organization
    legal_authenticator: Person
    facility_type: Code          # healthcareFacilityTypeCode, 1.2.250.1.71.4.2.4 (e.g. SA07)
    practice_setting: Code       # 1.2.250.1.213.1.1.4.9 (e.g. AMBULATOIRE)
    event_codes: tuple[Code, ...]  # modalities (.618) and anatomical regions (.695)
    reference_ids: tuple[ReferenceId, ...]
    kos: bytes
    kos_uid: str                 # KOS SOP Instance UID = DocumentEntry.uniqueId
    creation_time: datetime
    service_start: datetime
    service_stop: datetime
    confidentiality: tuple[str, ...] = ()   # DMP flags: MASQUE_PS, INVISIBLE_PATIENT, ...
    content_type: Code = C.CONTENT_TYPE_DEFAULT
    submission_set_uid: str = field(default_factory=new_uid)
    signature_uid: str = field(default_factory=new_uid)
    title: str = "Reference d'Objets d'un Examen d'Imagerie"
    comments: str = "KOS"

    def __post_init__(self) -> None:
        _check_oid("KOS SOP Instance UID", self.kos_uid)
        _check_oid("submission set uniqueId", self.submission_set_uid)
        _check_oid("signature uniqueId", self.signature_uid)
        if len({self.kos_uid, self.submission_set_uid, self.signature_uid}) != 3:
            raise SubmissionError("KOS, submission set and signature need distinct uniqueIds")
        if not self.kos:
            raise SubmissionError("the KOS is empty")
        if self.facility_type.system != C.FACILITY_TYPE_SYSTEM:
            raise SubmissionError(f"facility type must be coded in {C.FACILITY_TYPE_SYSTEM}")
        if self.practice_setting.system != C.PRACTICE_SETTING_SYSTEM:
            raise SubmissionError(f"practice setting must be coded in {C.PRACTICE_SETTING_SYSTEM}")
        for ev in self.event_codes:
            if ev.system not in (C.MODALITY_SYSTEM, C.REGION_SYSTEM):
                raise SubmissionError(f"event code {ev.code!r}: system {ev.system!r} is neither "
                                      f"modality ({C.MODALITY_SYSTEM}) nor region "
                                      f"({C.REGION_SYSTEM})")
        if not any(ev.system == C.MODALITY_SYSTEM for ev in self.event_codes):
            raise SubmissionError("at least one modality event code is required")
        for flag in self.confidentiality:
            if flag not in C.DMP_FLAGS:
                raise SubmissionError(f"unknown DMP confidentiality flag {flag!r}")
        types = [r.type for r in self.reference_ids]
        if ReferenceType.STUDY_UID not in types or ReferenceType.ACCESSION not in types:
            raise SubmissionError("referenceIdList needs the accession number and the study UID")
        if self.service_stop < self.service_start:
            raise SubmissionError("service stop time is before service start time")
        _utc(self.creation_time)

    @property
    def kos_sha1(self) -> str:
        return hashlib.sha1(self.kos).hexdigest().upper()


# Symbolic ids inside one submission (the registry assigns urn:uuid ids), as in the ANS sample.
SUBMISSION_SET_ID = "SubmissionSet01"
KOS_ID = "DocumentKOS"
SIGNATURE_ID = "Signature01"


class _Builder:
    def __init__(self) -> None:
        self.n = 0

    def el(self, parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, f"{{{RIM}}}{tag}", attrs)

    def slot(self, parent: etree._Element, name: str, *values: str) -> etree._Element:
        s = self.el(parent, "Slot", name=name)
        vl = self.el(s, "ValueList")
        for v in values:
            self.el(vl, "Value").text = v
        return s

    def localized(self, parent: etree._Element, tag: str, text: str) -> None:
        holder = self.el(parent, tag)
        ls = self.el(holder, "LocalizedString", charset="UTF8", value=text)
        ls.set("{http://www.w3.org/XML/1998/namespace}lang", "FR")

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def classification(self, parent: etree._Element, scheme: str, obj: str, code: Code
                       ) -> etree._Element:
        c = self.el(parent, "Classification", classificationScheme=scheme, classifiedObject=obj,
                    id=self.next_id("cl"), nodeRepresentation=code.code)
        self.slot(c, "codingScheme", code.system)
        self.localized(c, "Name", code.display or code.code)
        return c

    def author(self, parent: etree._Element, scheme: str, obj: str, person: Person,
               org: Organization) -> None:
        c = self.el(parent, "Classification", classificationScheme=scheme, classifiedObject=obj,
                    id=self.next_id("cl"))
        self.slot(c, "authorPerson", person.xcn)
        self.slot(c, "authorInstitution", org.xon)

    def external_id(self, parent: etree._Element, scheme: str, obj: str, value: str,
                    name: str) -> None:
        e = self.el(parent, "ExternalIdentifier", id=self.next_id("ei"),
                    identificationScheme=scheme, registryObject=obj, value=value)
        self.localized(e, "Name", name)


def submission_set(b: _Builder, parent: etree._Element, *, uid: str, source_id: str,
                   patient: PatientId, author: Person, institution: Organization,
                   content_type: Code, when: str, title: str = "submissionset title",
                   comments: str = "submissionset comments") -> etree._Element:
    ss = b.el(parent, "RegistryPackage", id=SUBMISSION_SET_ID)
    b.slot(ss, "submissionTime", when)
    b.localized(ss, "Name", title)
    b.localized(ss, "Description", comments)
    b.author(ss, C.SS_AUTHOR, SUBMISSION_SET_ID, author, institution)
    b.classification(ss, C.SS_CONTENT_TYPE, SUBMISSION_SET_ID, content_type)
    b.el(ss, "Classification", classificationNode=C.SS_NODE, classifiedObject=SUBMISSION_SET_ID,
         id=b.next_id("cl"))
    b.external_id(ss, C.SS_PATIENT_ID, SUBMISSION_SET_ID, patient.xds, "XDSSubmissionSet.patientId")
    b.external_id(ss, C.SS_SOURCE_ID, SUBMISSION_SET_ID, source_id, "XDSSubmissionSet.sourceId")
    b.external_id(ss, C.SS_UNIQUE_ID, SUBMISSION_SET_ID, uid, "XDSSubmissionSet.uniqueId")
    return ss


def _document_entry(b: _Builder, parent: etree._Element, s: KosSubmission, *, obj: str,
                    mime: str, content: bytes, uid: str, when: str, signature: bool) -> None:
    eo = b.el(parent, "ExtrinsicObject", id=obj, mimeType=mime, objectType=C.DE_OBJECT_TYPE)
    b.slot(eo, "hash", hashlib.sha1(content).hexdigest().upper())
    b.slot(eo, "size", str(len(content)))
    # The ANS validator sample carries a URI slot (the file name inside an XDM export).
    b.slot(eo, "URI", "SIGN01.XML" if signature else "KOS01.DCM")
    b.slot(eo, "creationTime", when if signature else _utc(s.creation_time))
    b.slot(eo, "submissionTime", when)
    b.slot(eo, "languageCode", "art" if signature else "fr-FR")
    b.slot(eo, "legalAuthenticator", s.legal_authenticator.xcn)
    b.slot(eo, "serviceStartTime", when if signature else _utc(s.service_start))
    b.slot(eo, "serviceStopTime", when if signature else _utc(s.service_stop))
    b.slot(eo, "sourcePatientId", s.patient.xds if signature else s.patient.source)
    if not signature:
        pi = s.patient_info
        b.slot(eo, "sourcePatientInfo", f"PID-5|{pi.family}^{pi.given}^^^^^L",
               f"PID-7|{pi.birth_date}", f"PID-8|{pi.sex}")
    b.localized(eo, "Name", C.EVENT_SIGNATURE_SOURCE.display if signature else s.title)
    b.localized(eo, "Description", "" if signature else s.comments)
    b.author(eo, C.DE_AUTHOR, obj, s.legal_authenticator if signature else s.author,
             s.institution)
    b.classification(eo, C.DE_CLASS, obj, C.CLASS_SIGNATURE if signature else C.CLASS_IMAGING)
    b.classification(eo, C.DE_TYPE, obj, C.TYPE_SIGNATURE if signature else C.TYPE_KOS)
    b.classification(eo, C.DE_CONFIDENTIALITY, obj, C.CONFIDENTIALITY_NORMAL)
    for flag in s.confidentiality:
        b.classification(eo, C.DE_CONFIDENTIALITY, obj, C.DMP_FLAGS[flag])
    b.classification(eo, C.DE_FORMAT, obj, C.FORMAT_SIGNATURE if signature else C.FORMAT_KOS)
    b.classification(eo, C.DE_FACILITY, obj, s.facility_type)
    b.classification(eo, C.DE_PRACTICE, obj, s.practice_setting)
    for ev in ((C.EVENT_SIGNATURE_SOURCE,) if signature else s.event_codes):
        b.classification(eo, C.DE_EVENT, obj, ev)
    b.slot(eo, C.REFERENCE_ID_LIST, *(r.cxi for r in s.reference_ids))
    b.external_id(eo, C.DE_PATIENT_ID, obj, s.patient.xds, "XDSDocumentEntry.patientId")
    b.external_id(eo, C.DE_UNIQUE_ID, obj, uid, "XDSDocumentEntry.uniqueId")


def association(b: _Builder, parent: etree._Element, kind: str, source: str, target: str,
                **slots: str) -> etree._Element:
    a = b.el(parent, "Association", associationType=kind, id="urn:uuid:" + str(uuid.uuid4()),
             sourceObject=source, targetObject=target)
    for name, value in slots.items():
        b.slot(a, name, value)
    return a


def registry_objects(s: KosSubmission, signature_doc: bytes, *, source_id: str,
                     now: datetime | None = None, replaces: str | None = None
                     ) -> etree._Element:
    """``rim:RegistryObjectList`` for ITI-41; ``replaces`` is the entryUUID the KOS replaces."""
    _check_oid("sourceId", source_id)
    when = _utc(now or datetime.now(UTC))
    b = _Builder()
    rol = etree.Element(f"{{{RIM}}}RegistryObjectList", nsmap={None: RIM})
    submission_set(b, rol, uid=s.submission_set_uid, source_id=source_id, patient=s.patient,
                   author=s.author, institution=s.institution, content_type=s.content_type,
                   when=when)
    _document_entry(b, rol, s, obj=KOS_ID, mime="application/dicom", content=s.kos,
                    uid=s.kos_uid, when=when, signature=False)
    _document_entry(b, rol, s, obj=SIGNATURE_ID, mime="text/xml", content=signature_doc,
                    uid=s.signature_uid, when=when, signature=True)
    association(b, rol, C.HAS_MEMBER, SUBMISSION_SET_ID, KOS_ID, SubmissionSetStatus="Original")
    association(b, rol, C.HAS_MEMBER, SUBMISSION_SET_ID, SIGNATURE_ID,
                SubmissionSetStatus="Original")
    association(b, rol, C.SIGNS, SIGNATURE_ID, SUBMISSION_SET_ID, SubmissionSetStatus="Original")
    if replaces is not None:
        if not re.fullmatch(r"urn:uuid:[0-9a-fA-F-]{36}", replaces):
            raise SubmissionError("the replaced entry must be given by its urn:uuid entryUUID")
        association(b, rol, C.RPLC, KOS_ID, replaces)
    return rol


def status_update_objects(entry_uuid: str, original: str, new: str, *, patient: PatientId,
                          author: Person, institution: Organization, source_id: str,
                          content_type: Code = C.CONTENT_TYPE_DEFAULT,
                          now: datetime | None = None) -> etree._Element:
    """``rim:RegistryObjectList`` for ITI-57: a submission set and one status change."""
    if not re.fullmatch(r"urn:uuid:[0-9a-fA-F-]{36}", entry_uuid):
        raise SubmissionError("the entry must be given by its urn:uuid entryUUID")
    _check_oid("sourceId", source_id)
    when = _utc(now or datetime.now(UTC))
    b = _Builder()
    rol = etree.Element(f"{{{RIM}}}RegistryObjectList", nsmap={None: RIM})
    submission_set(b, rol, uid=new_uid(), source_id=source_id, patient=patient, author=author,
                   institution=institution, content_type=content_type, when=when)
    association(b, rol, C.UPDATE_AVAILABILITY, SUBMISSION_SET_ID, entry_uuid,
                OriginalStatus=original, NewStatus=new)
    return rol
