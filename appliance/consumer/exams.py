"""The consumer role's list of a patient's imaging exams from the DMP (PROTOCOLS.md §4 steps 3-5).

    listing = await list_exams(dmp, patient, actor, modality="CT", db=db)
    if listing.status is ListingStatus.CONSENT_REQUIRED: ...   # ask the patient, then
    listing = await list_exams(dmp, patient, actor, patient_informed=True, db=db)

1. TD0.2: the record must exist, the box be authorised (VALIDE) and the patient not have opposed
   (:class:`AccessRefused`); an unknown opposition needs the patient informed first
   (``ListingStatus.CONSENT_REQUIRED``; the contextual call's ``InformationEtOppositionConsultation``).
2. ITI-18: FindDocuments (Approved, the modality or region as event code) or, with an accession
   and its issuer, FindDocumentsByReferenceId.
3. Keep the imaging KOS entries; ITI-43 each, parse it, check it belongs to this entry, patient
   and study, and check every RetrieveURL (:mod:`appliance.consumer.peers`).
4. Pair report (CR) entries with the KOS by the accession of their referenceIdList.

The TD0.2 and ITI-18 failures end the listing (:class:`DmpRetryableError`,
:class:`DmpPermanentError`); a KOS that cannot be retrieved or read is reported on its exam.
Every listing, refused or not, writes one audit event when a database is given.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum

from appliance import audit
from appliance.dicom.kos import KosManifest, KosParseError, SopRef, parse_kos
from appliance.dmp import codes as C
from appliance.dmp.client import DmpClient
from appliance.dmp.codes import Code
from appliance.dmp.errors import DmpError, DmpRetryableError
from appliance.dmp.metadata import PatientId, ReferenceId, ReferenceType
from appliance.dmp.transactions import DocumentEntry
from appliance.dmp.vihf import Actor, AuthMode
from appliance.logs import correlation_id
from appliance.store.db import Database

from .peers import RetrieveTarget, RetrieveUrlError, UrlPolicy, check_retrieve_url

__all__ = ["REPORT_TYPE", "AccessRefused", "Exam", "ExamList", "ExamProblem", "Institution",
           "ListingStatus", "RefusalReason", "ReportEntry", "SeriesLink", "list_exams"]

# [inf] An imaging report (CR d'imagerie) is indexed with the LOINC type of the ORU's OBR-4.
REPORT_TYPE = Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
_LOINC = REPORT_TYPE.system
MAX_PARALLEL_RETRIEVES = 4
_MODALITY = re.compile(r"[A-Z0-9]{1,16}")
_REGION = re.compile(r"[0-9A-Za-z.\-]{1,64}")
_DTM = re.compile(r"\d{4}(?:\d{2}){0,5}")
_ACCESSION_SUFFIX = "^" + ReferenceType.ACCESSION.value


class RefusalReason(StrEnum):
    NO_RECORD = "no-record"              # TD0.2 NF: the patient has no DMP
    NOT_AUTHORISED = "not-authorised"    # AUTORISATION is not VALIDE
    OPPOSED = "opposed"                  # the patient opposed access in an emergency context


class AccessRefused(Exception):
    """The DMP says this professional may not read this record; ``reason`` says why."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ListingStatus(StrEnum):
    OK = "ok"
    CONSENT_REQUIRED = "consent-required"   # opposition unknown: inform the patient, then retry


@dataclass(frozen=True)
class Institution:
    name: str
    id: str            # national structure identifier (IDNST), "" when absent


@dataclass(frozen=True)
class ExamProblem:
    """Why an exam's images cannot be offered; the exam's metadata are still listed."""

    stage: str         # "retrieve" (ITI-43) or "kos" (content of the manifest)
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class SeriesLink:
    study_uid: str
    series_uid: str
    retrieve_url: str | None
    sops: tuple[SopRef, ...]
    target: RetrieveTarget | None     # the checked RetrieveURL; None when it must not be fetched
    url_problem: str | None = None

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(s.sop_instance_uid for s in self.sops)


@dataclass(frozen=True)
class ReportEntry:
    """A report (CR) DocumentEntry found with the exams."""

    unique_id: str
    entry_uuid: str
    repository_id: str
    mime_type: str
    title: str
    accession: str | None
    created: datetime | None
    confidentiality: tuple[str, ...]


@dataclass(frozen=True)
class Exam:
    """One imaging exam: a KOS DocumentEntry and, once retrieved, what its manifest references."""

    kos_uid: str                     # DocumentEntry uniqueId = KOS SOP Instance UID
    entry_uuid: str
    repository_id: str
    study_uid: str | None
    accession: str | None
    created: datetime | None         # creationTime of the entry
    service_start: datetime | None
    service_stop: datetime | None
    modalities: tuple[str, ...]      # codes of JDV 1.2.250.1.213.1.1.5.618
    regions: tuple[Code, ...]        # JDV 1.2.250.1.213.1.1.5.695
    institution: Institution | None  # author institution
    confidentiality: tuple[str, ...]  # e.g. ("N",) or ("N", "MASQUE_PS")
    series: tuple[SeriesLink, ...] = ()
    reports: tuple[ReportEntry, ...] = ()
    problem: ExamProblem | None = None

    @property
    def masked(self) -> bool:
        return "MASQUE_PS" in self.confidentiality

    @property
    def viewable(self) -> bool:
        """At least one series can be fetched."""
        return self.problem is None and any(s.target is not None for s in self.series)


@dataclass(frozen=True)
class ExamList:
    status: ListingStatus
    exams: tuple[Exam, ...] = ()
    unpaired_reports: tuple[ReportEntry, ...] = ()   # reports whose exam KOS was not found


# ----- input checks -----

def _date_range(study_date: str | date | tuple[date, date] | None) -> tuple[date, date] | None:
    """``yyyymmdd`` or ``yyyymmdd-yyyymmdd`` (contextual call), a date, or a (from, to) pair."""
    if study_date is None:
        return None
    if isinstance(study_date, tuple):
        lo, hi = study_date
    elif isinstance(study_date, date):
        lo = hi = study_date
    else:
        m = re.fullmatch(r"(\d{8})(?:-(\d{8}))?", study_date)
        if m is None:
            raise ValueError("study_date must be yyyymmdd or yyyymmdd-yyyymmdd")
        try:
            lo = datetime.strptime(m[1], "%Y%m%d").date()
            hi = datetime.strptime(m[2] or m[1], "%Y%m%d").date()
        except ValueError:
            raise ValueError("study_date is not a valid date") from None
    if hi < lo:
        raise ValueError("study_date range ends before it starts")
    return lo, hi


def _dtm(value: str) -> datetime | None:
    """An XDS DTM (UTC, 4 to 14 digits); None when absent or malformed (the entry stays listed)."""
    if not _DTM.fullmatch(value):
        return None
    digits = value + "0101000000"[len(value) - 4:] if len(value) < 14 else value
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


# ----- entry classification -----

def _is_kos(e: DocumentEntry) -> bool:
    def same(c: Code | None, ref: Code) -> bool:
        return c is not None and (c.code, c.system) == (ref.code, ref.system)
    return (same(e.class_code, C.CLASS_IMAGING) and same(e.type_code, C.TYPE_KOS)
            and same(e.format_code, C.FORMAT_KOS))


def _is_report(e: DocumentEntry) -> bool:
    return e.type_code is not None and (e.type_code.code, e.type_code.system) == (
        REPORT_TYPE.code, _LOINC)


def _accession_key(e: DocumentEntry) -> str | None:
    """The whole accession CXi (value and issuer): two issuers may reuse a number."""
    for r in e.reference_ids:
        if r.endswith(_ACCESSION_SUFFIX):
            return r
    return None


def _institution(e: DocumentEntry) -> Institution | None:
    for xon in e.author_institutions:
        parts = xon.split("^")
        if parts[0]:
            return Institution(parts[0], parts[9] if len(parts) > 9 else "")
    return None


def _flags(e: DocumentEntry) -> tuple[str, ...]:
    return tuple(c.code for c in e.confidentiality)


def _codes(e: DocumentEntry, system: str) -> tuple[Code, ...]:
    return tuple(c for c in e.event_codes if c.system == system)


def _exam(e: DocumentEntry) -> Exam:
    return Exam(
        kos_uid=e.unique_id, entry_uuid=e.entry_uuid, repository_id=e.repository_id,
        study_uid=e.study_uid, accession=e.accession, created=_dtm(e.creation_time),
        service_start=_dtm(e.service_start), service_stop=_dtm(e.service_stop),
        modalities=tuple(c.code for c in _codes(e, C.MODALITY_SYSTEM)),
        regions=_codes(e, C.REGION_SYSTEM), institution=_institution(e),
        confidentiality=_flags(e))


def _report(e: DocumentEntry) -> ReportEntry:
    return ReportEntry(unique_id=e.unique_id, entry_uuid=e.entry_uuid,
                       repository_id=e.repository_id, mime_type=e.mime_type, title=e.title,
                       accession=e.accession, created=_dtm(e.creation_time),
                       confidentiality=_flags(e))


def _wanted(exam: Exam, modality: str | None, region: str | None, accession: str | None,
            dates: tuple[date, date] | None) -> bool:
    # The registry ORs the codes of one event-code list, so the other filters are applied here.
    if modality is not None and modality not in exam.modalities:
        return False
    if region is not None and region not in {c.code for c in exam.regions}:
        return False
    if accession is not None and exam.accession != accession:
        return False
    if dates is not None:
        # A StudyDate is a local date (the RIS's): compare in the box's time zone, not in UTC.
        when = exam.service_start or exam.created
        if when is None or not dates[0] <= when.astimezone().date() <= dates[1]:
            return False
    return True


# ----- KOS -----

def _series_links(m: KosManifest, policy: UrlPolicy) -> tuple[SeriesLink, ...]:
    out = []
    for s in m.series:
        target, problem = None, None
        if s.retrieve_url is None:
            problem = "the KOS gives no RetrieveURL for this series"
        else:
            try:
                target = check_retrieve_url(s.retrieve_url, policy)
            except RetrieveUrlError as e:
                problem = str(e)
            else:
                if (target.study_uid, target.series_uid) != (s.study_uid, s.series_uid):
                    target, problem = None, "RetrieveURL names another study or series"
        out.append(SeriesLink(s.study_uid, s.series_uid, s.retrieve_url, s.sops, target, problem))
    return tuple(out)


def _kos_mismatch(m: KosManifest, exam: Exam, patient: PatientId) -> str | None:
    """Why this manifest must not be trusted for this entry (messages carry no identifiers)."""
    if m.sop_instance_uid != exam.kos_uid:
        return "the KOS SOP Instance UID is not the DMP entry's uniqueId"
    if m.patient_id != patient.ins:
        return "the KOS names another patient than the DMP record"
    if exam.study_uid is not None and m.study_uid != exam.study_uid:
        return "the KOS study is not the study of the DMP entry"
    if any(s.study_uid != m.study_uid for s in m.series):
        return "the KOS references series of another study"
    return None


async def _with_kos(exam: Exam, dmp: DmpClient, patient: PatientId, actor: Actor,
                    policy: UrlPolicy, gate: asyncio.Semaphore) -> Exam:
    try:
        async with gate:
            data = await dmp.retrieve(exam.repository_id, exam.kos_uid, patient, actor)
    except DmpError as e:
        return replace(exam, problem=ExamProblem("retrieve", f"the DMP did not return the KOS: "
                                                 f"{e}", retryable=isinstance(e, DmpRetryableError)))
    try:
        manifest = await asyncio.to_thread(parse_kos, data)
    except KosParseError as e:
        return replace(exam, problem=ExamProblem("kos", f"the KOS cannot be read: {e}"))
    mismatch = _kos_mismatch(manifest, exam, patient)
    if mismatch is not None:
        return replace(exam, problem=ExamProblem("kos", mismatch))
    return replace(exam, study_uid=manifest.study_uid,
                   accession=exam.accession or manifest.accession_number,
                   series=_series_links(manifest, policy))


def _pair(exams: list[Exam], keys: dict[str, str | None], reports: Iterable[DocumentEntry]
          ) -> tuple[list[Exam], tuple[ReportEntry, ...]]:
    """Reports attached to the listed exams by accession (``keys``: every KOS entry found ->
    its accession). A report of a KOS the filters left out is left out too; a report matching
    no KOS at all is returned apart."""
    by_key: dict[str, list[ReportEntry]] = {}
    unpaired: list[ReportEntry] = []
    exam_keys = set(keys.values())
    for r in reports:
        key = _accession_key(r)
        if key is not None and key in exam_keys:
            by_key.setdefault(key, []).append(_report(r))
        else:
            unpaired.append(_report(r))
    paired = [replace(x, reports=tuple(by_key.get(keys[x.entry_uuid] or "", ())))
              for x in exams]
    return paired, tuple(unpaired)


# ----- audit -----

async def _audit(db: Database | None, actor: Actor, patient: PatientId, outcome: str,
                 detail: str) -> None:
    if db is None:
        return
    # Blocking commit, in a thread; the correlation id is passed on explicitly. A failure
    # propagates: no listing is served that the audit trail did not record.
    await asyncio.to_thread(audit.record, db, actor.identifier, "dmp.list", "dmp",
                            patient_id=patient.ins, outcome=outcome,
                            detail=f"structure={actor.structure_id} {detail}".strip(),
                            correlation=correlation_id.get())


# ----- the listing -----

def _check_request(actor: Actor, modality: str | None, region: str | None,
                   accession: str | ReferenceId | None) -> None:
    if actor.mode is not AuthMode.INDIRECTE_RENFORCEE:
        raise ValueError("a consumer listing needs a professional authenticated by Pro Santé "
                         "Connect (Authentification_Mode INDIRECTE_RENFORCEE)")
    if modality is not None and not _MODALITY.fullmatch(modality):
        raise ValueError("modality must be a DICOM modality code such as CT or MR")
    if region is not None and not _REGION.fullmatch(region):
        raise ValueError("region must be a code of JDV 1.2.250.1.213.1.1.5.695")
    if isinstance(accession, ReferenceId) and accession.type is not ReferenceType.ACCESSION:
        raise ValueError("accession must be a ReferenceId of type ACCESSION")
    if isinstance(accession, str) and not accession.strip():
        raise ValueError("accession must not be empty")


async def _may_list(dmp: DmpClient, patient: PatientId, actor: Actor, patient_informed: bool,
                    db: Database | None) -> bool:
    """TD0.2: True to go on, False when the patient must be informed first; raises
    :class:`AccessRefused` (audited) when the DMP refuses."""
    try:
        access = await dmp.check_access(patient, actor)
    except DmpError as e:
        await _audit(db, actor, patient, "error", f"access check failed: {type(e).__name__}")
        raise
    refusal = None
    if not access.exists:
        refusal = AccessRefused(RefusalReason.NO_RECORD, "this patient has no DMP")
    elif access.authorization != "VALIDE":
        refusal = AccessRefused(RefusalReason.NOT_AUTHORISED,
                                "the DMP does not authorise this structure to read the record")
    elif access.opposition == "yes":
        refusal = AccessRefused(RefusalReason.OPPOSED,
                                "the patient opposed access to the DMP by this professional")
    if refusal is not None:
        await _audit(db, actor, patient, "refused", str(refusal.reason))
        raise refusal
    if access.opposition != "no" and not patient_informed:
        await _audit(db, actor, patient, "consent-required", "opposition unknown")
        return False
    return True

async def list_exams(dmp: DmpClient, patient: PatientId, actor: Actor, *,
                     modality: str | None = None, region: str | None = None,
                     accession: str | ReferenceId | None = None,
                     study_date: str | date | tuple[date, date] | None = None,
                     patient_informed: bool = False, url_policy: UrlPolicy | None = None,
                     db: Database | None = None) -> ExamList:
    """The imaging exams in ``patient``'s DMP that ``actor`` may see, newest first.

    ``accession``: a :class:`ReferenceId` (value and issuer) is sent as FindDocumentsByReferenceId;
    a bare accession number is matched on the entries found. ``patient_informed``: the patient
    was informed and did not oppose (needed when the DMP does not know the opposition status).
    Raises :class:`AccessRefused`, ``DmpRetryableError``, ``DmpPermanentError``, ``ValueError``
    (bad filter or an actor not authenticated by Pro Santé Connect).
    """
    _check_request(actor, modality, region, accession)
    dates = _date_range(study_date)
    filters = " ".join(name for name, value in (("modality", modality), ("region", region),
                                                ("accession", accession), ("date", study_date))
                       if value is not None)
    if not await _may_list(dmp, patient, actor, patient_informed, db):
        return ExamList(ListingStatus.CONSENT_REQUIRED)

    try:
        if isinstance(accession, ReferenceId):
            found = await dmp.find_by_reference_id(patient, accession, actor)
        else:
            events = tuple(Code(c, s) for c, s in ((modality, C.MODALITY_SYSTEM),
                                                   (region, C.REGION_SYSTEM)) if c)
            found = await dmp.find_documents(patient, actor, event_codes=events[:1])
    except DmpError as e:
        await _audit(db, actor, patient, "error", f"query failed: {type(e).__name__}")
        raise

    accession_value = accession.value if isinstance(accession, ReferenceId) else accession
    kos_entries = [e for e in found.entries if _is_kos(e) and e.status == C.APPROVED]
    keys = {e.entry_uuid: _accession_key(e) for e in kos_entries}
    exams = [x for x in map(_exam, kos_entries)
             if _wanted(x, modality, region, accession_value, dates)]
    policy = url_policy or UrlPolicy()
    gate = asyncio.Semaphore(MAX_PARALLEL_RETRIEVES)
    exams = list(await asyncio.gather(*(_with_kos(x, dmp, patient, actor, policy, gate)
                                        for x in exams)))
    reports = [e for e in found.entries if _is_report(e) and e.status == C.APPROVED
               and (accession_value is None or e.accession == accession_value)]
    paired, unpaired = _pair(exams, keys, reports)
    paired.sort(key=lambda x: x.service_start or x.created or datetime.min.replace(tzinfo=UTC),
                reverse=True)
    problems = sum(1 for x in paired if x.problem is not None)
    await _audit(db, actor, patient, "ok",
                 f"exams={len(paired)} problems={problems} {filters}".strip())
    return ExamList(ListingStatus.OK, tuple(paired), unpaired)
