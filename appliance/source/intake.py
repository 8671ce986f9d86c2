"""HL7 report intake: turn an accepted message into a job, in one transaction, before the ACK.

The MLLP server calls :meth:`ReportIntake.handle` and answers ``AA`` only when it returns, so an
ACKed report is always committed. A repeated (sending application, MSH-10) pair is acknowledged
again without a second job.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from typing import Any, Callable

from appliance.hl7.errors import ErrorCode, Hl7Error
from appliance.hl7.messages import Action, Report
from appliance.source.outbox import enqueue
from appliance.store import Database, valid_uid

log = logging.getLogger(__name__)


def report_payload(report: Report) -> dict[str, Any]:
    """What the publication job needs from the message: flat fields, flags, sender, the CDA."""
    return {
        "control_id": report.control_id,
        "message_type": report.message_type,
        "trigger": report.trigger,
        "action": report.effective_action.value,
        "ins": report.ins,
        "ins_oid": report.ins_oid,
        "ipp": report.ipp,
        "ipp_oid": report.ipp_oid,
        "ipp_authority": report.ipp_authority,
        "birth_family": report.birth_family,
        "given": report.given,
        "used_family": report.used_family,
        "birth_date": report.birth_date,
        "sex": report.sex,
        "placer_order": report.placer_order,
        "filler_order": report.filler_order,
        # The CDA carries the real accession; ANS samples put the filler order in OBR-18.
        "accession": (report.cda_report.accession.extension
                      if report.cda_report and report.cda_report.accession else report.accession),
        "document_id": (cda.document_id.root + (f"^{cda.document_id.extension}"
                                                if cda.document_id.extension else "")
                        if (cda := report.cda_report) is not None else report.document_number),
        "flags": dict(report.flags),
        "sender": dataclasses.asdict(report.sender) if report.sender else None,
        "cda": base64.b64encode(report.cda).decode() if report.cda else "",
    }


class ReportIntake:
    """``handle`` is the MLLP server's handler; see the module docstring."""

    def __init__(self, db: Database, image_wait: float, wake: Callable[[], None]) -> None:
        self.db = db
        self.image_wait = image_wait  # seconds to wait for the images to reach the PACS
        self.wake = wake

    def _withdrawn_study(self, report: Report) -> str:
        """A withdrawal without a CDA (MDM^T04 may carry none) names its report by document
        number (TXA-12) or order number: find the study of the last report that matches."""
        for key, value in (("document_id", report.document_number),
                           ("placer_order", report.placer_order),
                           ("filler_order", report.filler_order)):
            if not value:
                continue
            row = self.db.query_one(
                f"SELECT study_uid FROM jobs WHERE kind='report' AND "
                f"json_extract(payload, '$.{key}') = ? ORDER BY id DESC LIMIT 1", (value,))
            if row is not None:
                return str(row["study_uid"])
        raise Hl7Error("AE", ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                       "withdrawal without a CDA: no earlier report with this document or "
                       "order number")

    async def handle(self, report: Report) -> None:
        cda = report.cda_report
        if cda is None and report.effective_action is not Action.WITHDRAW:
            raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                           "the message carries no CDA report to publish")
        study_uid = cda.study_uid if cda else self._withdrawn_study(report)
        if not study_uid or not valid_uid(study_uid):
            raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                           "the CDA has no valid study UID (documentationOf/serviceEvent/id)")
        now = time.time()
        with self.db.transaction() as c:
            seen = c.execute("SELECT job_id FROM hl7_messages WHERE sending_app=? AND "
                             "control_id=?", (report.sending_application,
                                              report.control_id)).fetchone()
            if seen is not None:
                log.info("duplicate HL7 message acknowledged again",
                         extra={"job": seen["job_id"]})
                return
            job = enqueue(c, "report", study_uid, report_payload(report),
                          deadline_at=now + self.image_wait)
            c.execute("INSERT INTO hl7_messages(control_id, sending_app, job_id, received_at) "
                      "VALUES (?,?,?,?)", (report.control_id, report.sending_application, job, now))
        log.info("report accepted", extra={"job": job, "action": report.effective_action.value})
        self.wake()
