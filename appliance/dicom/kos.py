"""KOS manifests: build the DRIM-M manifest of a study, parse manifests and IOCM rejection notes.

A KOS is a DICOM Key Object Selection Document (PS3.3 §A.35.4, content template TID 2010). The box
publishes one per validated report (PROTOCOLS.md §2.3): it lists every instance of the study and,
per series, the WADO-RS ``RetrieveURL`` where a peer box fetches it. A PACS sends the box another
kind of KOS, the IOCM rejection note (title from CID 7011), to say instances were withdrawn.

Built directly with pydicom. highdicom's ``KeyObjectSelectionDocument`` was considered: it wants the
full Dataset of every referenced instance (we only have C-FIND identifiers), it writes no
``RetrieveURL`` (we would patch its output), and it would add a dependency tree for ~100 lines.

Parsing is hardened: any input that is not a well-formed KOS raises :class:`KosParseError` (never a
pydicom or struct exception). pydicom's warnings and log records quote element values (patient
data): building never triggers them, parsing records the warnings and drops the log records.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from appliance import __version__
from appliance.dicom.uids import UidRootError, check_root, is_valid_uid, new_uid, stable_uid

_T = TypeVar("_T")

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
KOS_SERIES_NUMBER = 59  # as in the ANS sample KOS
MAX_KOS_BYTES = 64 * 1024 * 1024  # a 10,000-instance manifest is ~3 MB
MANUFACTURER = "Open DRIMbox"
IMPLEMENTATION_CLASS_UID = stable_uid("urn:open-drimbox:implementation")
IMPLEMENTATION_VERSION_NAME = f"DRIMBOX_{__version__}"[:16]


class KosError(ValueError):
    """Base of the errors of this module."""


class KosBuildError(KosError):
    """A request from which no valid KOS can be written; the message names the field."""


class KosParseError(KosError):
    """Bytes (or a Dataset) that are not a usable KOS; the message says what is wrong."""


@dataclass(frozen=True)
class Code:
    """A coded concept (value, coding scheme, meaning); equality ignores the meaning."""

    value: str
    scheme: str
    meaning: str = field(default="", compare=False)


MANIFEST = Code("113030", "DCM", "Manifest")
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")
# CID 7011 "Rejected for Quality Reasons" and its siblings: the IOCM rejection-note titles.
REJECTED_FOR_QUALITY = Code("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY = Code("113037", "DCM", "Rejected for Patient Safety Reasons")
INCORRECT_WORKLIST_ENTRY = Code("113038", "DCM", "Incorrect Modality Worklist Entry")
RETENTION_EXPIRED = Code("113039", "DCM", "Data Retention Policy Expired")
REJECTION_TITLES: frozenset[Code] = frozenset(
    {REJECTED_FOR_QUALITY, REJECTED_FOR_PATIENT_SAFETY, INCORRECT_WORKLIST_ENTRY, RETENTION_EXPIRED}
)

# INS assigning authorities by OID (PROTOCOLS.md §6: .8 prod, .10 test, .11 demo NIR; .9 NIA).
_INS_AUTHORITY = {
    "1.2.250.1.213.1.4.8": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.10": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.11": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.9": "ASIP-SANTE-INS-NIA",
}


# --- input -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """The patient as the report names them (INS from the CDA / PID-3)."""

    ins: str
    ins_oid: str
    family_name: str
    given_names: str = ""
    birth_date: date | None = None
    sex: str = ""  # M, F, O; "" or HL7's "U" when unknown (written empty, DICOM type 2)


@dataclass(frozen=True)
class Study:
    study_uid: str
    study_date: date | None = None
    study_time: time | None = None
    study_id: str = ""
    accession_number: str = ""
    accession_issuer_oid: str = ""
    placer_order_number: str = ""
    placer_order_issuer_oid: str = ""
    filler_order_number: str = ""
    referring_physician: str = ""  # DICOM PN form, "Family^Given"
    description: str = ""


@dataclass(frozen=True)
class Instance:
    """One instance of the study as the PACS's IMAGE-level C-FIND returns it."""

    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None


@dataclass(frozen=True)
class KosRequest:
    patient: Patient
    study: Study
    instances: Sequence[Instance]
    public_url: str  # the box's base URL; RetrieveURL = {public_url}/dicom-web/studies/…/series/…
    previous: KosManifest | None = None  # set for a new version of an already published KOS
    title: Code = MANIFEST
    uid_root: str | None = None  # organisation root; None = 2.25
    created: datetime | None = None  # default: now, local time with its UTC offset
    device_name: str = "DRIMbox"  # observer context: which box wrote the manifest


@dataclass(frozen=True)
class RejectionRequest:
    """A rejection note as a PACS writes it (IOCM): the PACS's own patient ID, no RetrieveURL."""

    patient_id: str
    patient_name: str  # DICOM PN form
    study: Study
    rejected: Sequence[Instance]
    reason: Code = REJECTED_FOR_QUALITY
    uid_root: str | None = None
    created: datetime | None = None


@dataclass(frozen=True)
class BuiltKos:
    data: bytes  # DICOM Part 10 file, explicit VR little endian
    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int


# --- output of parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class SopRef:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    retrieve_url: str | None
    sops: tuple[SopRef, ...]


@dataclass(frozen=True)
class KosManifest:
    sop_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    instance_number: int | None
    title: Code
    study_uid: str
    patient_id: str  # the INS in a DRIM-M manifest
    patient_id_issuer_oid: str | None
    accession_number: str | None
    created: datetime | None  # ContentDate + ContentTime (+ TimezoneOffsetFromUTC when present)
    series: tuple[SeriesRef, ...]

    @property
    def retrieve_urls(self) -> dict[str, str | None]:
        """Series Instance UID -> RetrieveURL (None when the manifest has none for it)."""
        return {s.series_uid: s.retrieve_url for s in self.series}

    @property
    def sop_instance_uids(self) -> frozenset[str]:
        return frozenset(sop.sop_instance_uid for s in self.series for sop in s.sops)


@dataclass(frozen=True)
class RejectionNote:
    sop_instance_uid: str
    reason: Code
    patient_id: str
    rejected: tuple[SeriesRef, ...]

    @property
    def study_uids(self) -> frozenset[str]:
        return frozenset(s.study_uid for s in self.rejected)

    @property
    def rejected_sop_instance_uids(self) -> frozenset[str]:
        return frozenset(sop.sop_instance_uid for s in self.rejected for sop in s.sops)


# --- building --------------------------------------------------------------------------------


class _Quiet(Dataset):
    """A Dataset whose attribute assignments skip pydicom's per-value validation.

    That validation warns *and logs* with the offending value quoted, which for a name or an INS
    would put patient data in the box's logs. Everything is validated once in _validate_values,
    with messages that name the attribute, never its value.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        # DICOM keywords start with a capital; pydicom's own attributes never do (fast path).
        tag = tag_for_keyword(name) if name[:1].isupper() else None
        if tag is None:
            super().__setattr__(name, value)
            return
        self[tag] = DataElement(tag, dictionary_VR(tag), value,
                                validation_mode=pydicom_config.IGNORE)


def build_kos(req: KosRequest) -> BuiltKos:
    """The DRIM-M manifest of ``req.study``: Part 10 bytes and its fresh SOP Instance UID."""
    _check_request(req)
    base = req.public_url.rstrip("/")
    series = _group_by_series(req.instances)
    created = req.created or datetime.now().astimezone()
    sop_uid = new_uid(req.uid_root)
    if req.previous is not None:
        series_uid = req.previous.series_instance_uid
        series_number = req.previous.series_number or KOS_SERIES_NUMBER
        instance_number = (req.previous.instance_number or 1) + 1
    else:
        series_uid, series_number, instance_number = new_uid(req.uid_root), KOS_SERIES_NUMBER, 1

    ds = _document(sop_uid, created, req.title)
    p = req.patient
    ds.PatientName = _person_name(p.family_name, p.given_names, "patient")
    ds.PatientID = p.ins
    ds.IssuerOfPatientID = _INS_AUTHORITY[p.ins_oid]
    ds.IssuerOfPatientIDQualifiersSequence = [_iso_issuer(p.ins_oid)]
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d") if p.birth_date else ""
    ds.PatientSex = "" if p.sex == "U" else p.sex
    other = _Quiet()
    other.PatientID = p.ins
    other.IssuerOfPatientID = ds.IssuerOfPatientID
    other.TypeOfPatientID = "TEXT"
    other.IssuerOfPatientIDQualifiersSequence = [_iso_issuer(p.ins_oid)]
    ds.OtherPatientIDsSequence = [other]

    _study_module(ds, req.study)
    _series_module(ds, series_uid, series_number, created)
    ds.InstanceNumber = instance_number
    ds.ReferencedRequestSequence = [_referenced_request(req.study)]
    device_uid = stable_uid(base)
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence(
            req.study.study_uid,
            series,
            url=lambda s: f"{base}/dicom-web/studies/{req.study.study_uid}/series/{s}",
            location_uid=device_uid,
        )
    ]
    content = _device_observer(device_uid, req.device_name)
    content.append(_text_item(KEY_OBJECT_DESCRIPTION, _description(req.study, series)))
    content.extend(_reference_items(series))
    ds.ContentSequence = content
    return _finish(ds, sop_uid, series_uid, instance_number)


def build_rejection_note(req: RejectionRequest) -> BuiltKos:
    """An IOCM rejection note (KOS titled from CID 7011) for ``req.rejected``, as a PACS sends it."""
    if req.reason not in REJECTION_TITLES:
        raise KosBuildError(f"reason: {req.reason.value} is not a CID 7011 rejection title")
    _check_uid_root(req.uid_root)
    _check_study(req.study)
    _check_instances(req.rejected, "rejected")
    series = _group_by_series(req.rejected)
    created = req.created or datetime.now().astimezone()
    sop_uid, series_uid = new_uid(req.uid_root), new_uid(req.uid_root)
    ds = _document(sop_uid, created, req.reason)
    ds.PatientName = req.patient_name
    ds.PatientID = req.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    _study_module(ds, req.study)
    _series_module(ds, series_uid, 1, created)
    ds.InstanceNumber = 1
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence(req.study.study_uid, series, url=None, location_uid=None)
    ]
    ds.ContentSequence = _reference_items(series)
    return _finish(ds, sop_uid, series_uid, 1)


def _check_request(req: KosRequest) -> None:
    _check_uid_root(req.uid_root)
    p = req.patient
    if not p.ins.strip():
        raise KosBuildError("patient.ins: the INS is required")
    if p.ins_oid not in _INS_AUTHORITY:
        # Default deny: any other OID (an IPP authority, a typo) would misidentify the patient.
        raise KosBuildError("patient.ins_oid: not an INS OID (" + ", ".join(_INS_AUTHORITY) + ")")
    if p.sex not in ("M", "F", "O", "U", ""):
        raise KosBuildError("patient.sex: expected M, F, O, U or empty")
    if req.title in REJECTION_TITLES:
        raise KosBuildError("title: a rejection title makes a rejection note (build_rejection_note)")
    _check_study(req.study)
    _check_instances(req.instances, "instances")
    for name, oid in (("accession_issuer_oid", req.study.accession_issuer_oid),
                      ("placer_order_issuer_oid", req.study.placer_order_issuer_oid)):
        if oid and not is_valid_uid(oid):
            raise KosBuildError(f"study.{name}: not an OID")
    url = urlsplit(req.public_url)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise KosBuildError("public_url: expected an absolute http(s) URL without query")
    prev = req.previous
    if prev is not None:
        if prev.study_uid != req.study.study_uid:
            raise KosBuildError("previous: the previous KOS is for another study")
        if prev.patient_id != p.ins:
            raise KosBuildError("previous: the previous KOS is for another patient")


def _check_uid_root(root: str | None) -> None:
    if root is not None:
        try:
            check_root(root)
        except UidRootError as e:
            raise KosBuildError(f"uid_root: {e}") from None


def _check_study(study: Study) -> None:
    if not is_valid_uid(study.study_uid):
        raise KosBuildError("study.study_uid: not a valid DICOM UID")


def _check_instances(instances: Sequence[Instance], name: str) -> None:
    if not instances:
        raise KosBuildError(f"{name}: a KOS references at least one instance")
    seen: dict[str, Instance] = {}
    for i, inst in enumerate(instances):
        for attr in ("series_uid", "sop_class_uid", "sop_instance_uid"):
            if not is_valid_uid(getattr(inst, attr)):
                raise KosBuildError(f"{name}[{i}].{attr}: not a valid DICOM UID")
        first = seen.setdefault(inst.sop_instance_uid, inst)
        if (first.series_uid, first.sop_class_uid) != (inst.series_uid, inst.sop_class_uid):
            raise KosBuildError(f"{name}[{i}]: SOP instance listed twice with different series or class")


def _group_by_series(instances: Iterable[Instance]) -> list[list[Instance]]:
    """Series ordered by SeriesNumber, instances by InstanceNumber; exact duplicates dropped."""
    by_series: dict[str, dict[str, Instance]] = {}
    for inst in instances:
        by_series.setdefault(inst.series_uid, {}).setdefault(inst.sop_instance_uid, inst)

    def number(n: int | None) -> tuple[bool, int]:
        return (n is None, n or 0)

    groups = [
        sorted(members.values(), key=lambda i: number(i.instance_number))
        for members in by_series.values()
    ]
    return sorted(groups, key=lambda g: number(g[0].series_number))


def _document(sop_uid: str, created: datetime, title: Code) -> Dataset:
    ds = _Quiet()
    ds.SpecificCharacterSet = "ISO_IR 100"  # replaced by ISO_IR 192 in _finish when needed
    ds.SOPClassUID = KOS_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S")
    if created.tzinfo is not None:
        ds.TimezoneOffsetFromUTC = created.strftime("%z")
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(title)]
    ds.ContinuityOfContent = "SEPARATE"
    template = _Quiet()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    ds.ContentDate = ds.InstanceCreationDate
    ds.ContentTime = ds.InstanceCreationTime
    return ds


def _study_module(ds: Dataset, study: Study) -> None:
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    ds.StudyTime = study.study_time.strftime("%H%M%S") if study.study_time else ""
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.accession_number and study.accession_issuer_oid:
        ds.IssuerOfAccessionNumberSequence = [_iso_issuer(study.accession_issuer_oid)]
    if study.description:
        ds.StudyDescription = study.description


def _series_module(ds: Dataset, series_uid: str, number: int, created: datetime) -> None:
    ds.Modality = "KO"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDate = created.strftime("%Y%m%d")
    ds.SeriesTime = created.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = []


def _referenced_request(study: Study) -> Dataset:
    item = _Quiet()
    item.StudyInstanceUID = study.study_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = study.accession_number
    if study.accession_number and study.accession_issuer_oid:
        item.IssuerOfAccessionNumberSequence = [_iso_issuer(study.accession_issuer_oid)]
    item.PlacerOrderNumberImagingServiceRequest = study.placer_order_number
    if study.placer_order_number and study.placer_order_issuer_oid:
        item.OrderPlacerIdentifierSequence = [_iso_issuer(study.placer_order_issuer_oid)]
    item.FillerOrderNumberImagingServiceRequest = study.filler_order_number
    item.RequestedProcedureID = ""
    item.RequestedProcedureDescription = ""
    item.RequestedProcedureCodeSequence = []
    return item


def _evidence(
    study_uid: str,
    series: list[list[Instance]],
    url: Callable[[str], str] | None,
    location_uid: str | None,
) -> Dataset:
    study_item = _Quiet()
    study_item.StudyInstanceUID = study_uid
    items = []
    for members in series:
        s = _Quiet()
        s.SeriesInstanceUID = members[0].series_uid
        if url is not None:
            s.RetrieveURL = url(members[0].series_uid)
        if location_uid is not None:
            s.RetrieveLocationUID = location_uid
        s.ReferencedSOPSequence = [_sop_ref(i) for i in members]
        items.append(s)
    study_item.ReferencedSeriesSequence = items
    return study_item


def _device_observer(device_uid: str, device_name: str) -> list[Dataset]:
    """TID 1002/1004 observer context: the box itself is the observer (a device)."""
    kind = _Quiet()
    kind.RelationshipType = "HAS OBS CONTEXT"
    kind.ValueType = "CODE"
    kind.ConceptNameCodeSequence = [_code(Code("121005", "DCM", "Observer Type"))]
    kind.ConceptCodeSequence = [_code(Code("121007", "DCM", "Device"))]
    uid = _Quiet()
    uid.RelationshipType = "HAS OBS CONTEXT"
    uid.ValueType = "UIDREF"
    uid.ConceptNameCodeSequence = [_code(Code("121012", "DCM", "Device Observer UID"))]
    uid.UID = device_uid
    name = _text_item(Code("121013", "DCM", "Device Observer Name"), device_name)
    name.RelationshipType = "HAS OBS CONTEXT"
    maker = _text_item(Code("121014", "DCM", "Device Observer Manufacturer"), MANUFACTURER)
    maker.RelationshipType = "HAS OBS CONTEXT"
    return [kind, uid, name, maker]


def _description(study: Study, series: list[list[Instance]]) -> str:
    """Readable summary; same line shapes as the ANS demonstrator, whose consumers read them."""
    lines = [f"Examen : {study.description}"]
    for members in series:
        first = members[0]
        lines.append(f"Série-{first.series_uid} : {first.modality} @  : {first.series_description}")
    return "\n".join(lines)


def _text_item(concept: Code, text: str) -> Dataset:
    item = _Quiet()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [_code(concept)]
    item.TextValue = text
    return item


def _reference_items(series: list[list[Instance]]) -> list[Dataset]:
    items: list[Dataset] = []
    for members in series:
        for inst in members:
            item = _Quiet()
            item.RelationshipType = "CONTAINS"
            item.ValueType = _value_type(inst.sop_class_uid)
            item.ReferencedSOPSequence = [_sop_ref(inst)]
            items.append(item)
    return items


_WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
# Image IODs whose SOP class name lacks the word "Image".
_OTHER_IMAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
})


def _value_type(sop_class_uid: str) -> str:
    """IMAGE for image objects, WAVEFORM for waveforms, COMPOSITE (valid for anything) otherwise.

    A dose SR or a PDF referenced as IMAGE would be a wrong KOS; COMPOSITE is always allowed.
    """
    if sop_class_uid.startswith(_WAVEFORM_PREFIX):
        return "WAVEFORM"
    if "Image Storage" in UID(sop_class_uid).name or sop_class_uid in _OTHER_IMAGE_CLASSES:
        return "IMAGE"
    return "COMPOSITE"


def _sop_ref(inst: Instance) -> Dataset:
    ref = _Quiet()
    ref.ReferencedSOPClassUID = inst.sop_class_uid
    ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
    return ref


def _code(code: Code) -> Dataset:
    item = _Quiet()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning or code.value
    return item


def _iso_issuer(oid: str) -> Dataset:
    item = _Quiet()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return item


def _person_name(family: str, given: str, what: str) -> str:
    for part in (family, given):
        if any(c in part for c in "^=\\"):
            raise KosBuildError(f"{what} name: '^', '=' and '\\' are not allowed in a name part")
    return f"{family}^{given}" if given else family


def _finish(ds: Dataset, sop_uid: str, series_uid: str, instance_number: int) -> BuiltKos:
    if not _encodable(ds, "latin-1"):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a name outside Latin-1 (e.g. "Œ")
    _validate_values(ds, "")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS_UID)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return BuiltKos(buf.getvalue(), sop_uid, series_uid, instance_number)


_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})
_STRING_VRS = _TEXT_VRS | {"AE", "CS", "DA", "TM", "UI", "UR"}


def _encodable(ds: Dataset, codec: str) -> bool:
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None:
            try:
                str(elem.value).encode(codec)
            except UnicodeEncodeError:
                return False
    return True


def _validate_values(ds: Dataset, path: str) -> None:
    """Refuse over-long or ill-formed values (pydicom's VR rules) instead of writing a bad file."""
    for elem in ds:
        where = f"{path}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value):
                _validate_values(item, f"{where}[{n}].")
            continue
        if elem.VR not in _STRING_VRS:
            continue  # numbers are set from ints by this module
        if isinstance(elem.value, MultiValue) or elem.VM > 1:
            if dictionary_VM(elem.tag) == "1":
                raise KosBuildError(f"{where}: one value expected (a backslash separates values)")
            values = list(elem.value)
        else:
            values = [elem.value]
        for v in values:
            try:
                validate_value(elem.VR, str(v), pydicom_config.RAISE)
            except ValueError:
                # pydicom's message may quote the value (patient data): say what is wrong instead.
                raise KosBuildError(
                    f"{where}: a {len(str(v))}-character value not allowed for VR {elem.VR} "
                    "(too long or forbidden characters)"
                ) from None


# --- parsing ---------------------------------------------------------------------------------


def parse_kos(data: bytes, *, max_bytes: int = MAX_KOS_BYTES) -> KosManifest:
    """Read a manifest (Part 10 bytes) into its study, series -> RetrieveURL and SOP lists."""
    def run() -> KosManifest:
        ds, cut = _read(data, max_bytes)
        if cut:
            raise KosParseError(_CUT)
        return _manifest(ds)

    return _guarded(run)


def rejection_note(data: bytes | Dataset, *, max_bytes: int = MAX_KOS_BYTES) -> RejectionNote | None:
    """The IOCM rejection note in ``data``, or None for any other valid DICOM object.

    Garbage or a malformed rejection note raises :class:`KosParseError`.
    """

    def run() -> RejectionNote | None:
        if isinstance(data, Dataset):  # e.g. from the C-STORE SCP: whole, but decoded lazily
            if _uid(data, "SOPClassUID") != KOS_SOP_CLASS_UID:
                return None
            ds = data
            _decode_all(ds)
        else:
            if isinstance(data, (bytes, bytearray)) and len(data) > max_bytes and not _is_kos(data):
                return None  # a large image: not ours to refuse
            ds, cut = _read(data, max_bytes, stop_before_pixels=True)
            if cut:
                raise KosParseError(_CUT)
            if _uid(ds, "SOPClassUID") != KOS_SOP_CLASS_UID:
                return None
        title = _title(ds)
        if title not in REJECTION_TITLES:
            return None
        return RejectionNote(
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            reason=title,
            patient_id=str(ds.get("PatientID", "") or ""),
            rejected=_checked_evidence(ds),
        )

    return _guarded(run)


def _is_kos(data: bytes | bytearray) -> bool:
    head = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(head.get("SOPClassUID", "")) == KOS_SOP_CLASS_UID


# pydicom reads damaged files leniently: a missing delimiter or a short file only *warns* and
# yields a partial dataset. These warnings mean references may be lost, so they are fatal here.
_WARNINGS_LOCK = threading.Lock()
_parsing = threading.local()


class _MuteWhileParsing(logging.Filter):
    """pydicom also *logs* its warnings, value included, to the "pydicom" logger: drop the records
    emitted by a thread while it parses here (other threads and other code are untouched)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


logging.getLogger("pydicom").addFilter(_MuteWhileParsing())
_DAMAGE_WARNINGS = ("End of file", "Expected sequence item", "Expected 0x00000000", "Unknown VR")


def _guarded(fn: Callable[[], _T]) -> _T:
    # pydicom parses lazily and raises whatever the bytes provoke (ValueError, KeyError,
    # struct.error, EOFError, TypeError, UnicodeDecodeError, RecursionError…); callers get one type.
    # Warnings are recorded, not shown: pydicom's quote element values, i.e. patient data.
    # The warning filters are process-global: overlapping catch_warnings() in two threads (SCP
    # handlers, the loop) would restore each other's state, so parses here take turns.
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _parsing.active = True
        try:
            result = fn()
        except KosParseError:
            raise
        except InvalidDicomError as e:
            raise KosParseError(f"not a DICOM Part 10 file: {e}") from None
        except Exception as e:  # noqa: BLE001 - see above
            raise KosParseError(f"malformed DICOM ({type(e).__name__})") from None
        finally:
            _parsing.active = False
    if any(str(w.message).startswith(_DAMAGE_WARNINGS) for w in caught):
        raise KosParseError("truncated or corrupt DICOM (an element or a sequence is cut)")
    return result


class _CutDetector(io.BytesIO):
    """Notes a read that returns some but not all of the bytes asked for: the file was cut inside
    an element. pydicom treats that as a short value, or as the end of a sequence, and carries on."""

    cut = False

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and 0 < len(data) < size:
            self.cut = True
        return data


def _read(data: bytes, max_bytes: int, *, stop_before_pixels: bool = False) -> tuple[Dataset, bool]:
    """The dataset, and whether the bytes were cut inside an element.

    Pixel data is skipped when asked: a KOS has none, so deciding whether an image is a rejection
    note need not read its megabytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise KosParseError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise KosParseError(f"KOS of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    reader = _CutDetector(bytes(data))
    ds = dcmread(reader, stop_before_pixels=stop_before_pixels)
    _decode_all(ds)
    return ds, reader.cut


_CUT = "truncated DICOM: the file ends inside an element"


def _decode_all(ds: Dataset) -> None:
    """Decode every element now, so a corrupt file fails here rather than later in a caller."""
    for elem in ds.iterall():
        _ = elem.value


def _manifest(ds: Dataset) -> KosManifest:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != KOS_SOP_CLASS_UID:
        raise KosParseError(f"not a Key Object Selection Document (SOP class {sop_class or 'missing'})")
    if ds.get("ValueType") != "CONTAINER":
        raise KosParseError("root content item is not a CONTAINER")
    issuer = None
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence") or []
    if qualifiers and qualifiers[0].get("UniversalEntityID"):
        issuer = str(qualifiers[0].UniversalEntityID)
    accession = str(ds.get("AccessionNumber", "") or "") or None
    return KosManifest(
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        title=_title(ds),
        study_uid=_uid(ds, "StudyInstanceUID"),
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_id_issuer_oid=issuer,
        accession_number=accession,
        created=_content_datetime(ds),
        series=_checked_evidence(ds),
    )


def _title(ds: Dataset) -> Code:
    names = ds.get("ConceptNameCodeSequence")
    if not names or len(names) != 1:
        raise KosParseError("document title (ConceptNameCodeSequence) missing")
    item = names[0]
    value, scheme = item.get("CodeValue"), item.get("CodingSchemeDesignator")
    if not value or not scheme:
        raise KosParseError("document title has no code value or coding scheme")
    return Code(str(value), str(scheme), str(item.get("CodeMeaning", "") or ""))


_RELATIONSHIPS = frozenset({"CONTAINS", "HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS PROPERTIES",
                            "HAS ACQ CONTEXT", "INFERRED FROM", "SELECTED FROM"})
_VALUE_TYPES = frozenset({"TEXT", "CODE", "NUM", "DATETIME", "DATE", "TIME", "UIDREF", "PNAME",
                          "COMPOSITE", "IMAGE", "WAVEFORM", "SCOORD", "SCOORD3D", "TCOORD",
                          "CONTAINER", "TABLE"})
_REFERENCE_TYPES = frozenset({"COMPOSITE", "IMAGE", "WAVEFORM"})


def _checked_evidence(ds: Dataset) -> tuple[SeriesRef, ...]:
    """The evidence references, once checked against the content tree.

    PS3.3 C.17.6.2.1: the evidence is the full set of instances the content refers to. Requiring
    both to list the same instances, and every content item to be whole, also catches a file cut
    inside its last sequence, which pydicom reads without complaint.
    """
    series = _evidence_refs(ds)
    content = ds.get("ContentSequence")
    if not content:
        raise KosParseError("ContentSequence missing or empty: a KOS references at least one object")
    referenced: set[str] = set()
    for item in content:
        if item.get("RelationshipType") not in _RELATIONSHIPS:
            raise KosParseError("content item with a missing or unknown RelationshipType")
        value_type = item.get("ValueType")
        if value_type not in _VALUE_TYPES:
            raise KosParseError("content item with a missing or unknown ValueType")
        if value_type in _REFERENCE_TYPES:
            refs = item.get("ReferencedSOPSequence")
            if not refs or len(refs) != 1:
                raise KosParseError("reference content item without its ReferencedSOPSequence item")
            _uid(refs[0], "ReferencedSOPClassUID", "content ")
            referenced.add(_uid(refs[0], "ReferencedSOPInstanceUID", "content "))
    evidence = {sop.sop_instance_uid for s in series for sop in s.sops}
    if referenced != evidence:
        raise KosParseError(
            f"content tree and evidence disagree ({len(referenced)} vs {len(evidence)} instances)"
        )
    return series


def _evidence_refs(ds: Dataset) -> tuple[SeriesRef, ...]:
    studies = ds.get("CurrentRequestedProcedureEvidenceSequence")
    if not studies:
        raise KosParseError("CurrentRequestedProcedureEvidenceSequence missing or empty")
    out: list[SeriesRef] = []
    for study in studies:
        study_uid = _uid(study, "StudyInstanceUID", "evidence ")
        series_items = study.get("ReferencedSeriesSequence")
        if not series_items:
            raise KosParseError("evidence study item without ReferencedSeriesSequence")
        for s in series_items:
            sops = s.get("ReferencedSOPSequence")
            if not sops:
                raise KosParseError("evidence series item without ReferencedSOPSequence")
            url = s.get("RetrieveURL")
            out.append(SeriesRef(
                study_uid=study_uid,
                series_uid=_uid(s, "SeriesInstanceUID", "evidence "),
                retrieve_url=str(url) if url else None,
                sops=tuple(
                    SopRef(_uid(r, "ReferencedSOPClassUID", "evidence "),
                           _uid(r, "ReferencedSOPInstanceUID", "evidence "))
                    for r in sops
                ),
            ))
    return tuple(out)


def _uid(ds: Dataset, keyword: str, where: str = "") -> str:
    value = ds.get(keyword)
    text = str(value) if value is not None else ""
    if not is_valid_uid(text):
        raise KosParseError(f"{where}{keyword} missing or not a valid UID")
    return text


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KosParseError(f"{keyword} is not an integer") from None


def _content_datetime(ds: Dataset) -> datetime | None:
    d, t = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    if not d:
        return None
    text = d + (t.split(".")[0].ljust(6, "0") if t else "000000")
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    try:
        if offset:
            return datetime.strptime(text + offset, "%Y%m%d%H%M%S%z")
        return datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        raise KosParseError("ContentDate/ContentTime is not a valid date and time") from None


__all__ = [
    "INCORRECT_WORKLIST_ENTRY",
    "KEY_OBJECT_DESCRIPTION",
    "MANIFEST",
    "REJECTED_FOR_PATIENT_SAFETY",
    "REJECTED_FOR_QUALITY",
    "REJECTION_TITLES",
    "RETENTION_EXPIRED",
    "BuiltKos",
    "Code",
    "Instance",
    "KosBuildError",
    "KosError",
    "KosManifest",
    "KosParseError",
    "KosRequest",
    "Patient",
    "RejectionNote",
    "RejectionRequest",
    "SeriesRef",
    "SopRef",
    "Study",
    "build_kos",
    "build_rejection_note",
    "parse_kos",
    "rejection_note",
]
