"""The publication state machine of the source role (ARCHITECTURE.md §5, PROTOCOLS.md §2–3).

A report job moves ``received → resolved → built → published`` (or ``quarantined``, ``failed``,
``superseded``, ``withdrawn``). Each step commits before the next begins, so a crash repeats at most
the step it interrupted:

- ``received``: C-FIND the study in the PACS (study UID, accession as fallback); wait with backoff
  while the images are not there (until the job's deadline), quarantine on an accession or patient
  mismatch: a KOS is never published for the wrong patient.
- ``resolved``: build the KOS from the instances found (minus IOCM-rejected ones) and record it as
  a ``pending`` publication with its uniqueId (the KOS SOP Instance UID).
- ``built``: send it (ITI-41, RPLC when it replaces a published version) or, for a withdrawal,
  delete the published entry (ITI-57). A resend after a crash is answered by the DMP with
  ``XDSDuplicateUniqueIdInRegistry`` for the same uniqueId: checked and taken as success, so each
  KOS version reaches the DMP exactly once.

IOCM jobs (a rejection note from the PACS) rebuild the current KOS without the rejected instances
and replace it, or delete it when nothing is left.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol

from appliance.config import Config
from appliance.dicom import kos as kosmod
from appliance.dicom.scu import InstanceMatch, PacsError, PacsUnavailable, SeriesMatch, StudyMatch
from appliance.dmp import codes as C
from appliance.dmp.errors import DmpPermanentError, DmpRetryableError
from appliance.dmp.metadata import (
    KosSubmission,
    Organization,
    PatientId,
    PatientInfo,
    Person,
    ReferenceId,
    ReferenceType,
)
from appliance.hl7.cda import CdaReport, parse_cda
from appliance.source.outbox import Job, Step
from appliance.store import Database

log = logging.getLogger(__name__)

DUPLICATE = "XDSDuplicateUniqueIdInRegistry"
# The ANS samples carry this dummy issuer for the study UID reference; the box uses its own
# configured value, defaulting to the same.
STUDY_UID_ISSUER = "1.2.3.4.5.6"
DMP_FLAGS = ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX")


class Pacs(Protocol):
    async def find_studies(self, *, study_uid: str | None = None,
                           accession: str | None = None) -> list[StudyMatch]: ...
    async def find_series(self, study_uid: str) -> list[SeriesMatch]: ...
    async def find_instances(self, study_uid: str,
                             series_uid: str | None = None) -> list[InstanceMatch]: ...


class Dmp(Protocol):
    async def publish(self, submission: KosSubmission) -> Any: ...
    async def replace(self, old_entry_uuid: str, submission: KosSubmission) -> Any: ...
    async def delete(self, entry_uuid: str, previous: KosSubmission) -> Any: ...
    async def get_documents(self, unique_ids: list[str], patient: PatientId, actor: Any, *,
                            return_type: str = "LeafClass") -> Any: ...


@dataclass
class Resolved:
    study: StudyMatch
    instances: list[kosmod.Instance]


class Quarantine(Exception):
    """The report and the images disagree; a person must look."""


class Publisher:
    """Handlers for the outbox job kinds ``report`` and ``iocm``."""

    def __init__(self, config: Config, db: Database, pacs: Pacs, dmp: Dmp,
                 image_retry_max: float = 900.0, store: Any = None) -> None:
        self.config = config
        self.db = db
        self.store = store
        self.pacs = pacs
        self.dmp = dmp
        self.image_retry_max = image_retry_max

    # -- outbox entry points --------------------------------------------------------------------
    async def report(self, job: Job) -> Step:
        p = job.payload
        if job.state == "received":
            if p.get("flags", {}).get("DESTDMP") is False and p["action"] != "withdraw":
                return Step("done", "the report is not destined to the DMP (DESTDMP=N)")
            if self._newer_report_exists(job):
                return Step("superseded", "a newer report for this study arrived")
            if p["action"] == "withdraw":
                return self._plan_withdrawal(job)
            return await self._resolve(job)
        if job.state == "resolved":
            return self._build(job)
        if job.state == "built":
            return await self._send(job)
        return Step("failed", f"unexpected state {job.state!r}")

    async def iocm(self, job: Job) -> Step:
        current = self._current_publication(job.study_uid)
        if job.state == "received":
            if current is None:
                return Step("done", "nothing published for this study")
            # Rebuild from the report that published the current version; the rejected
            # instances are in rejected_instances, written with this job.
            payload = {**self._job_payload(current["job_id"]), "action": "replace"}
            delete = Step("built", "every instance was rejected: delete the KOS",
                          payload={**payload, "action": "withdraw",
                                   "target": current["kos_sop_uid"]})
            return await self._resolve(dataclasses.replace(job, payload=payload),
                                       nothing_left=delete)
        return await self.report(job)

    # -- received: find the study -------------------------------------------------------------
    def _newer_report_exists(self, job: Job) -> bool:
        row = self.db.query_one("SELECT 1 FROM jobs WHERE kind='report' AND study_uid=? AND id>? "
                                "AND state='received'", (job.study_uid, job.id))
        return row is not None

    async def _resolve(self, job: Job, nothing_left: Step | None = None) -> Step:
        """C-FIND the study. ``nothing_left``: the step when every instance was rejected
        (default: quarantine, a person decides)."""
        p = job.payload
        try:
            resolved = await self._find(job.study_uid, p)
        except (PacsUnavailable, PacsError) as e:
            return Step("received", f"PACS unreachable or refused the query: {e}",
                        count_attempt=True)
        except Quarantine as e:
            return Step("quarantined", str(e))
        if resolved is None:
            if job.deadline_at is not None and time.time() > job.deadline_at:
                return Step("quarantined", "the images never reached the PACS within the "
                                           "waiting window")
            wait = min(self.image_retry_max, 30.0 * 2 ** min(job.attempts, 8))
            return Step("received", "waiting for the images to reach the PACS", retry_in=wait,
                        count_attempt=True)
        if not resolved.instances:
            return nothing_left or Step("quarantined", "every instance of the study was "
                                                       "rejected (IOCM)")
        study = resolved.study
        return Step("resolved", "", payload={
            **p,
            "pacs_study": {"study_uid": study.study_uid, "study_date": study.study_date,
                           "study_time": study.study_time,
                           "description": study.study_description},
            "instances": [i.__dict__ for i in resolved.instances],
        })

    async def _find(self, study_uid: str, p: dict[str, Any]) -> Resolved | None:
        matches = await self.pacs.find_studies(study_uid=study_uid)
        if not matches and p.get("accession"):
            # Fallback: the report's study UID is unknown to the PACS, but its accession number
            # names exactly one study, which passes the patient check below.
            matches = await self.pacs.find_studies(accession=p["accession"])
            if len(matches) > 1:
                raise Quarantine("several PACS studies carry the report's accession number")
        if not matches:
            return None
        study = matches[0]
        study_uid = study.study_uid
        if p.get("accession") and study.accession_number and \
                study.accession_number != p["accession"]:
            raise Quarantine("accession number differs between the report and the PACS study")
        if p.get("ipp") and study.patient_id and study.patient_id != p["ipp"]:
            raise Quarantine("patient ID (IPP) differs between the report and the PACS study")
        rejected = {r["sop_uid"] for r in self.db.query(
            "SELECT sop_uid FROM rejected_instances WHERE study_uid=?", (study_uid,))}
        instances: list[kosmod.Instance] = []
        seen_rejected = False
        for se in await self.pacs.find_series(study_uid):
            if se.modality in ("KO", "PR", "SR"):  # manifests and notes are not images to share
                continue
            for inst in await self.pacs.find_instances(study_uid, se.series_uid):
                if inst.sop_uid in rejected:
                    seen_rejected = True
                    continue
                instances.append(kosmod.Instance(
                    series_uid=se.series_uid, modality=se.modality, series_number=se.series_number,
                    series_description=se.series_description, sop_class_uid=inst.sop_class_uid,
                    sop_instance_uid=inst.sop_uid, instance_number=inst.instance_number))
        if not instances and not seen_rejected:
            return None  # the images have not reached the PACS yet
        return Resolved(study, instances)  # empty: every instance was rejected

    # -- resolved: build the KOS ----------------------------------------------------------------
    def _build(self, job: Job) -> Step:
        p = job.payload
        pending = self.db.query_one("SELECT kos_sop_uid FROM publications WHERE job_id=? AND "
                                    "state='pending' ORDER BY version DESC LIMIT 1", (job.id,))
        if pending is not None:  # built before a crash, not yet marked: send that one
            return Step("built", "", payload={**p, "kos_uid": pending["kos_sop_uid"]})
        cda = self._cda(p)
        kos_study = self._kos_study(job)
        previous = self._current_publication(kos_study)
        prev_manifest = kosmod.parse_kos(previous["kos"]) if previous else None
        # One creation time for the KOS (ContentDate/Time) and the XDS creationTime, kept with
        # the publication so that sending never has to parse the KOS again.
        created = datetime.now(timezone.utc).replace(microsecond=0)
        try:
            built = kosmod.build_kos(self._kos_request(p, cda, prev_manifest, created))
        except kosmod.KosError as e:
            return Step("quarantined", f"cannot build the KOS: {e}")
        version = (previous["version"] + 1) if previous else 1
        if self.store is not None:  # the box serves its own manifests like any instance
            self.store.ingest_bytes(built.data)
        with self.db.transaction() as c:
            c.execute("INSERT INTO publications(kos_sop_uid, study_uid, job_id, version, kos, "
                      "entry_uuid, state, replaces, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                      (built.sop_instance_uid, kos_study, job.id, version, built.data,
                       f"urn:uuid:{uuid.uuid4()}", "pending",
                       previous["kos_sop_uid"] if previous else None, created.timestamp()))
        return Step("built", "", payload={**p, "kos_uid": built.sop_instance_uid})

    def _kos_request(self, p: dict[str, Any], cda: CdaReport,
                     previous: kosmod.KosManifest | None,
                     created: datetime) -> kosmod.KosRequest:
        st = p["pacs_study"]
        patient = kosmod.Patient(ins=p["ins"], ins_oid=p["ins_oid"],
                                 family_name=p.get("birth_family") or cda.birth_family,
                                 given_names=p.get("given") or " ".join(cda.given),
                                 birth_date=_date(p.get("birth_date") or cda.birth_time),
                                 sex=_dicom_sex(p.get("sex") or cda.sex))
        study = kosmod.Study(
            study_uid=st["study_uid"], study_date=_date(st.get("study_date", "")),
            study_time=None, accession_number=p.get("accession") or
            (cda.accession.extension if cda.accession else ""),
            accession_issuer_oid=cda.accession.root if cda.accession else "",
            placer_order_number=(cda.order_id.extension if cda.order_id else "")
            or p.get("placer_order", ""),
            placer_order_issuer_oid=cda.order_id.root if cda.order_id else "",
            filler_order_number=p.get("filler_order", ""),
            description=st.get("description", ""))
        instances = [kosmod.Instance(**i) for i in p["instances"]]
        return kosmod.KosRequest(patient=patient, study=study, instances=instances,
                                 public_url=self.config.box.public_url, previous=previous,
                                 uid_root=self.config.dicom.uid_root or None,
                                 created=created.astimezone(),
                                 device_name=self.config.box.name)

    # -- built: talk to the DMP -----------------------------------------------------------------
    async def _send(self, job: Job) -> Step:
        p = job.payload
        if p["action"] == "withdraw":
            return await self._withdraw(job)
        pub = self.db.query_one("SELECT * FROM publications WHERE kos_sop_uid=?", (p["kos_uid"],))
        if pub is None:
            return Step("resolved", "the built KOS was lost; building again")
        submission = self._submission(p, pub)
        try:
            if pub["replaces"]:
                # Look the old version up as the structure that published it: a box may only
                # read back, in INDIRECTE mode, what its structure published.
                prev = self.db.query_one("SELECT * FROM publications WHERE kos_sop_uid=?",
                                         (pub["replaces"],))
                prev_submission = self._submission(self._job_payload(prev["job_id"]), prev)
                old = await self._entry_uuid(pub["replaces"], prev_submission)
                if old is None:
                    log.warning("previous KOS version not found in the DMP; publishing anew",
                                extra={"job": job.id})
                    await self.dmp.publish(submission)
                else:
                    await self.dmp.replace(old, submission)
            else:
                await self.dmp.publish(submission)
        except DmpRetryableError as e:
            return Step("built", f"DMP unavailable: {e}", count_attempt=True)
        except DmpPermanentError as e:
            if e.code == DUPLICATE and await self._already_there(pub["kos_sop_uid"],
                                                                 submission):
                log.info("KOS already in the DMP (resent after a restart)",
                         extra={"job": job.id})
            else:
                with self.db.transaction() as c:
                    c.execute("UPDATE publications SET state='rejected' WHERE kos_sop_uid=?",
                              (pub["kos_sop_uid"],))
                return Step("failed", f"DMP refused the submission: {e.code}: {e.text}"[:2000])
        now = time.time()
        with self.db.transaction() as c:
            c.execute("UPDATE publications SET state='published', published_at=? "
                      "WHERE kos_sop_uid=?", (now, pub["kos_sop_uid"]))
            if pub["replaces"]:
                c.execute("UPDATE publications SET state='replaced' WHERE kos_sop_uid=?",
                          (pub["replaces"],))
        return Step("published", "replaced the previous version" if pub["replaces"] else "")

    def _plan_withdrawal(self, job: Job) -> Step:
        current = self._current_publication(self._kos_study(job))
        if current is None:
            return Step("withdrawn", "nothing was published for this study")
        return Step("built", "", payload={**job.payload, "target": current["kos_sop_uid"]})

    async def _withdraw(self, job: Job) -> Step:
        target = self.db.query_one("SELECT * FROM publications WHERE kos_sop_uid=?",
                                   (job.payload["target"],))
        if target is None or target["state"] == "deleted":
            return Step("withdrawn", "already deleted")
        source = self._job_payload(target["job_id"])
        previous = self._submission(source, target)
        try:
            entry = await self._entry_uuid(target["kos_sop_uid"], previous)
            if entry is not None:
                await self.dmp.delete(entry, previous)
        except DmpRetryableError as e:
            return Step("built", f"DMP unavailable: {e}", count_attempt=True)
        except DmpPermanentError as e:
            return Step("failed", f"DMP refused the deletion: {e.code}: {e.text}"[:2000])
        with self.db.transaction() as c:
            c.execute("UPDATE publications SET state='deleted' WHERE kos_sop_uid=?",
                      (target["kos_sop_uid"],))
        return Step("withdrawn", "KOS deleted from the DMP")

    async def _entry_uuid(self, kos_uid: str, submission: KosSubmission) -> str | None:
        """The registry's entryUUID of a KOS we published (ITI-18 GetDocuments, ObjectRef)."""
        from appliance.dmp.client import publication_actor

        result = await self.dmp.get_documents([kos_uid], submission.patient,
                                              publication_actor(submission),
                                              return_type="ObjectRef")
        refs = list(getattr(result, "refs", []) or [])
        return refs[0] if refs else None

    async def _already_there(self, kos_uid: str, submission: KosSubmission) -> bool:
        try:
            return await self._entry_uuid(kos_uid, submission) is not None
        except (DmpRetryableError, DmpPermanentError):
            return False

    # -- DMP metadata from the report ---------------------------------------------------------
    def _submission(self, p: dict[str, Any], pub: Any) -> KosSubmission:
        """The DMP metadata of publication row ``pub`` (its KOS, uid and creation time)."""
        kos_bytes, kos_uid = pub["kos"], pub["kos_sop_uid"]
        cda = self._cda(p)
        la = cda.legal_authenticator or cda.author
        au = cda.author or cda.legal_authenticator
        if la is None or au is None or la.id is None or au.id is None:
            raise ValueError("the CDA names no author or legal authenticator")
        org = au.organisation_id or la.organisation_id
        org_name = au.organisation_name or la.organisation_name
        if org is None:
            raise ValueError("the CDA names no organisation for the author")
        modalities = sorted({i["modality"] for i in p.get("instances", [])} or
                            ({cda.modality.code} if cda.modality else set()))
        events = [C.Code(m, C.MODALITY_SYSTEM) for m in modalities]
        if cda.region is not None:
            events.append(C.Code(cda.region.code, C.REGION_SYSTEM, cda.region.display))
        refs = [ReferenceId(p.get("accession") or cda.accession.extension,  # type: ignore[union-attr]
                            cda.accession.root if cda.accession else STUDY_UID_ISSUER,
                            ReferenceType.ACCESSION),
                ReferenceId(cda.study_uid, STUDY_UID_ISSUER, ReferenceType.STUDY_UID)]
        if cda.order_id is not None and cda.order_id.extension:
            refs.append(ReferenceId(cda.order_id.extension, cda.order_id.root,
                                    ReferenceType.ORDER))
        start = _ts(cda.service_start) or _ts(cda.effective_time) or datetime.now(timezone.utc)
        stop = _ts(cda.service_stop) or start
        flags = tuple(f for f in DMP_FLAGS if p.get("flags", {}).get(f))
        submission_uid, signature_uid = _derived_uids(kos_uid)
        return KosSubmission(
            patient=PatientId(p["ins"], p["ins_oid"]),
            patient_info=PatientInfo(p.get("birth_family") or cda.birth_family,
                                     (p.get("given") or " ".join(cda.given)).split(" ")[0],
                                     (p.get("birth_date") or cda.birth_time)[:8],
                                     _xds_sex(p.get("sex") or cda.sex)),
            author=Person(_person_id(au.id), au.family, au.given),
            institution=Organization(org_name or "Structure", _person_id(org)),
            legal_authenticator=Person(_person_id(la.id), la.family, la.given),
            facility_type=C.Code(cda.facility_type.code, C.FACILITY_TYPE_SYSTEM,
                                 cda.facility_type.display) if cda.facility_type else
            C.Code("SA07", C.FACILITY_TYPE_SYSTEM),
            practice_setting=C.Code(cda.practice_setting.code, C.PRACTICE_SETTING_SYSTEM,
                                    cda.practice_setting.display) if cda.practice_setting else
            C.Code("AMBULATOIRE", C.PRACTICE_SETTING_SYSTEM),
            event_codes=tuple(events), reference_ids=tuple(refs), kos=kos_bytes, kos_uid=kos_uid,
            creation_time=datetime.fromtimestamp(pub["created_at"], timezone.utc),
            service_start=start, service_stop=stop,
            confidentiality=flags, submission_set_uid=submission_uid, signature_uid=signature_uid)

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _cda(p: dict[str, Any]) -> CdaReport:
        return parse_cda(base64.b64decode(p["cda"]))

    def _kos_study(self, job: Job) -> str:
        """The study UID the KOS names: the PACS's (after an accession fallback) or the report's.
        Publications are keyed by it, as IOCM notes from the PACS are."""
        resolved = job.payload.get("pacs_study")
        if resolved:
            return str(resolved["study_uid"])
        row = self.db.query_one(
            "SELECT json_extract(payload, '$.pacs_study.study_uid') AS uid FROM jobs "
            "WHERE study_uid=? AND uid IS NOT NULL ORDER BY id DESC LIMIT 1", (job.study_uid,))
        return str(row["uid"]) if row and row["uid"] else job.study_uid

    def _current_publication(self, study_uid: str) -> Any:
        return self.db.query_one(
            "SELECT * FROM publications WHERE study_uid=? AND state='published' "
            "ORDER BY version DESC LIMIT 1", (study_uid,))

    def _job_payload(self, job_id: int) -> dict[str, Any]:
        row = self.db.query_one("SELECT payload FROM jobs WHERE id=?", (job_id,))
        return json.loads(row["payload"]) if row else {}


def _derived_uids(kos_uid: str) -> tuple[str, str]:
    """Submission set and signature uniqueIds derived from the KOS uid: a resend after a crash
    carries the same three uniqueIds, which is what makes it recognisable."""
    from appliance.dicom.uids import stable_uid

    return stable_uid(f"submission:{kos_uid}"), stable_uid(f"signature:{kos_uid}")


def _person_id(ii: Any) -> str:
    return ii.extension or ii.root


def _date(text: str) -> date | None:
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _ts(text: str) -> datetime | None:
    """HL7/CDA TS (``YYYYMMDD[HHMM[SS]][+ZZZZ]``) as an aware datetime (local France if no zone)."""
    if not text or len(text) < 8:
        return None
    body, tz = text, None
    for sign in "+-":
        if sign in text[8:]:
            i = text.index(sign, 8)
            body, zone = text[:i], text[i:]
            try:
                h, m = int(zone[1:3]), int(zone[3:5] or 0)
            except ValueError:
                return None
            tz = timezone((1 if sign == "+" else -1) * timedelta(hours=h, minutes=m))
            break
    body = body.split(".")[0]
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(body))
    if fmt is None:
        return None
    try:
        t = datetime.strptime(body, fmt)
    except ValueError:
        return None
    return t.replace(tzinfo=tz or timezone(timedelta(hours=1)))


def _dicom_sex(s: str) -> str:
    return {"M": "M", "F": "F"}.get(s.upper()[:1], "O" if s else "")


def _xds_sex(s: str) -> str:
    return {"M": "M", "F": "F"}.get(s.upper()[:1], "U")
