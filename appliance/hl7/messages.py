"""ORU^R01 (v2.5) and MDM^T02/T10/T04 (v2.6) imaging reports, as the ANS messages carry them,
parsed into a typed ``Report`` (PROTOCOLS.md §2.1).

Parsing is python-hl7's; this module only maps its tree to fields and refuses, with an
``Hl7Error`` naming the field, what the box cannot act on. Nothing here logs patient data.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import hl7

from appliance.hl7.cda import INS_OIDS, CdaReport
from appliance.hl7.errors import ErrorCode, Hl7Error

SUPPORTED = {  # (message type, trigger) -> accepted MSH-12 versions
    ("ORU", "R01"): ("2.5", "2.5.1"),
    ("MDM", "T02"): ("2.6",),
    ("MDM", "T10"): ("2.6",),
    ("MDM", "T04"): ("2.6",),
}
PROCESSING_IDS = ("P", "T", "D")  # production, training, debugging
CHARSETS = ("", "UNICODE UTF-8", "ASCII")  # MSH-18; the wire is decoded as UTF-8
META_SYSTEM = "MetaDMPMSS"
META_FLAGS = ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "CONNEXION_SECRETE",
              "MODIF_CONF_CODE", "DESTDMP", "DESTMSSANTEPS", "DESTMSSANTEPAT", "ACK_RECEPTION",
              "ACK_LECTURE_MSS")


class Action(enum.StrEnum):
    PUBLISH = "publish"
    REPLACE = "replace"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class Sender:
    """PRT with participation SB (sent by): the professional and structure, used for the VIHF."""

    rpps: str
    rpps_oid: str
    family: str
    given: str
    organisation_id: str
    organisation_oid: str
    organisation_type: str  # FINEG / FINEJ / IDNST
    organisation_name: str


@dataclass(frozen=True)
class Report:
    """One validated imaging report as received. ``cda`` is the decoded OBX-5 document (bytes);
    ``cda_report`` is filled by ``read_report`` once the CDA has been parsed and checked."""

    control_id: str  # MSH-10; duplicates are the handler's business (dedupe on it)
    message_type: str  # ORU / MDM
    trigger: str  # R01 / T02 / T10 / T04
    version: str  # MSH-12
    processing_id: str  # MSH-11
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    action: Action  # what the HL7 segments ask for (see ``effective_action``)
    ins: str
    ins_oid: str
    ipp: str
    ipp_authority: str  # CX-4.1 namespace, e.g. AUT-AFFECTATION
    ipp_oid: str  # CX-4.2
    birth_family: str  # PID-5 name type L
    given: str
    other_given: str
    used_family: str  # PID-5 name type D
    birth_date: str  # PID-7
    sex: str  # PID-8
    identity_status: str  # PID-32 (VALI = qualified INS)
    order_control: str  # ORC-1
    placer_order: str  # OBR-2.1
    filler_order: str  # OBR-3.1
    accession: str  # OBR-18 (placer field 1), as in the ANS samples
    result_status: str  # OBX-11 of the document OBX
    document_number: str  # TXA-12 (MDM only)
    cda: bytes | None
    flags: dict[str, bool] = field(default_factory=dict)
    sender: Sender | None = None
    cda_report: CdaReport | None = None
    birthplace: str = ""  # PID-11 address type BDL, county code (INSEE commune code)

    @property
    def ins_environment(self) -> str:
        return INS_OIDS.get(self.ins_oid, "")

    @property
    def effective_action(self) -> Action:
        """The HL7 action, upgraded to REPLACE when a 'publish' carries a CDA that replaces a
        previous version (relatedDocument RPLC): the ANS update sample CR_G1_MAJ signals the
        update only there."""
        if (self.action is Action.PUBLISH and self.cda_report is not None
                and self.cda_report.replaces is not None):
            return Action.REPLACE
        return self.action


# --- access to python-hl7's tree -----------------------------------------------------------


def _get(seg: Any, fld: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """Field value, unescaped, '' when absent (python-hl7 raises IndexError on short paths)."""
    try:
        value = seg.extract_field(1, fld, rep, comp, sub)
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return ""
    return value.strip() if isinstance(value, str) else ""


def _repetitions(seg: Any, fld: int) -> int:
    try:
        f = seg(fld)
    except (IndexError, KeyError, TypeError):
        return 0
    return len(f) if isinstance(f, hl7.Field) else 1


def _segments(msg: hl7.Message, name: str) -> list[Any]:
    return [s for s in msg if len(s) and len(s[0]) and str(s[0][0]) == name]


def _one(msg: hl7.Message, name: str, required: bool = True) -> Any:
    segs = _segments(msg, name)
    if not segs:
        if required:
            raise Hl7Error("AE", ErrorCode.SEGMENT_SEQUENCE_ERROR,
                           f"the {name} segment is missing", name)
        return None
    return segs[0]


def normalise(text: str) -> str:
    """HL7 separates segments with CR; files and some senders use CRLF or LF."""
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00\ufeff")


def parse_hl7(text: str) -> hl7.Message:
    """python-hl7's parse, with its assorted exceptions on malformed input turned into AR."""
    text = normalise(text)
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error("AR", ErrorCode.SEGMENT_SEQUENCE_ERROR,
                       "the message does not start with an MSH segment", "MSH")
    try:
        msg = hl7.parse(text)
    except Exception as e:  # python-hl7 raises IndexError/ValueError/... on bad input
        raise Hl7Error("AR", ErrorCode.SEGMENT_SEQUENCE_ERROR,
                       f"the message cannot be parsed as HL7 v2 ({type(e).__name__})") from None
    if not isinstance(msg, hl7.Message) or not _segments(msg, "MSH"):
        raise Hl7Error("AR", ErrorCode.SEGMENT_SEQUENCE_ERROR, "no MSH segment", "MSH")
    return msg


# --- the report ----------------------------------------------------------------------------


def parse_message(text: str) -> Report:
    """Parse one HL7 message (already decoded text) into a ``Report``, or raise ``Hl7Error``."""
    msg = parse_hl7(text)
    msh = _one(msg, "MSH")
    mtype, trigger = _get(msh, 9, 1, 1), _get(msh, 9, 1, 2)
    version = _get(msh, 12)
    control_id = _get(msh, 10)
    if not control_id:
        raise Hl7Error("AR", ErrorCode.REQUIRED_FIELD_MISSING,
                       "MSH-10 (message control id) is empty", "MSH^1^10")
    if not any(t == mtype for t, _ in SUPPORTED):
        raise Hl7Error("AR", ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                       f"message type {mtype!r} is not supported (ORU^R01, MDM^T02/T10/T04)",
                       "MSH^1^9")
    if (mtype, trigger) not in SUPPORTED:
        raise Hl7Error("AR", ErrorCode.UNSUPPORTED_EVENT_CODE,
                       f"event {mtype}^{trigger} is not supported (ORU^R01, MDM^T02/T10/T04)",
                       "MSH^1^9")
    if version not in SUPPORTED[(mtype, trigger)]:
        raise Hl7Error("AR", ErrorCode.UNSUPPORTED_VERSION_ID,
                       f"version {version!r} is not supported for {mtype}^{trigger} "
                       f"(expected {' or '.join(SUPPORTED[(mtype, trigger)])})", "MSH^1^12")
    processing_id = _get(msh, 11)
    if processing_id not in PROCESSING_IDS:
        raise Hl7Error("AR", ErrorCode.UNSUPPORTED_PROCESSING_ID,
                       f"processing id {processing_id!r} is not P, T or D", "MSH^1^11")
    charset = _get(msh, 18).upper()
    if charset not in CHARSETS:
        raise Hl7Error("AR", ErrorCode.TABLE_VALUE_NOT_FOUND,
                       f"character set {charset!r} is not supported (UNICODE UTF-8)", "MSH^1^18")

    pid = _one(msg, "PID")
    ins, ins_oid, ipp, ipp_authority, ipp_oid = _patient_ids(pid)
    birth_family = given = other_given = used_family = ""
    for r in range(1, _repetitions(pid, 5) + 1):
        kind = _get(pid, 5, r, 7)
        if kind == "L" or (kind == "" and not birth_family):
            birth_family = _get(pid, 5, r, 1)
            given, other_given = _get(pid, 5, r, 2), _get(pid, 5, r, 3)
        elif kind == "D":
            used_family = _get(pid, 5, r, 1)

    orc = _one(msg, "ORC", required=False)
    obr = _one(msg, "OBR", required=False)
    order_control = _get(orc, 1) if orc is not None else ""
    txa = _one(msg, "TXA", required=(mtype == "MDM"))

    document_obx, flags = _observations(msg)
    if document_obx is None and not (mtype == "MDM" and trigger == "T04"):
        raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                       "no OBX carries the CDA report (OBX-2 ED, OBX-5 ^TEXT^XML^Base64^...)",
                       "OBX")
    if document_obx is None and not (txa is not None and _get(txa, 12)):
        raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                       "an MDM^T04 without the CDA (OBX-5) needs the document number (TXA-12)",
                       "TXA^1^12")
    result_status = _get(document_obx, 11) if document_obx is not None else ""
    action = _action(mtype, trigger, order_control, result_status)
    cda = _document(document_obx) if document_obx is not None else None

    return Report(
        control_id=control_id,
        message_type=mtype,
        trigger=trigger,
        version=version,
        processing_id=processing_id,
        sending_application=_get(msh, 3),
        sending_facility=_get(msh, 4),
        receiving_application=_get(msh, 5),
        receiving_facility=_get(msh, 6),
        action=action,
        ins=ins,
        ins_oid=ins_oid,
        ipp=ipp,
        ipp_authority=ipp_authority,
        ipp_oid=ipp_oid,
        birth_family=birth_family,
        given=given,
        other_given=other_given,
        used_family=used_family,
        birth_date=_get(pid, 7),
        sex=_get(pid, 8),
        identity_status=_get(pid, 32),
        order_control=order_control,
        placer_order=_get(obr, 2) if obr is not None else "",
        filler_order=_get(obr, 3) if obr is not None else "",
        accession=_get(obr, 18) if obr is not None else "",
        result_status=result_status,
        document_number=_get(txa, 12) if txa is not None else "",
        cda=cda,
        flags=flags,
        sender=_sender(msg),
        birthplace=_birthplace(pid),
    )


def _birthplace(pid: Any) -> str:
    for r in range(1, _repetitions(pid, 11) + 1):
        if _get(pid, 11, r, 7) == "BDL":
            return _get(pid, 11, r, 9)
    return ""


def _patient_ids(pid: Any) -> tuple[str, str, str, str, str]:
    ins = ins_oid = ipp = ipp_authority = ipp_oid = ""
    for r in range(1, _repetitions(pid, 3) + 1):
        value, kind = _get(pid, 3, r, 1), _get(pid, 3, r, 5)
        namespace, oid = _get(pid, 3, r, 4, 1), _get(pid, 3, r, 4, 2)
        if kind == "INS" or namespace == "ASIP-SANTE-INS-NIR" or oid in INS_OIDS:
            if not ins:
                ins, ins_oid = value, oid
        elif kind == "PI" and not ipp:
            ipp, ipp_authority, ipp_oid = value, namespace, oid
    if not ins:
        raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                       "PID-3 has no INS (identifier type INS, authority ASIP-SANTE-INS-NIR)",
                       "PID^1^3")
    if ins_oid not in INS_OIDS:
        raise Hl7Error("AE", ErrorCode.TABLE_VALUE_NOT_FOUND,
                       f"PID-3 INS authority OID {ins_oid!r} is not an INS OID "
                       "(1.2.250.1.213.1.4.8 prod, .9 NIA, .10 test, .11 demo)", "PID^1^3")
    problem = nir_problem(ins)
    if problem:
        raise Hl7Error("AE", ErrorCode.DATA_TYPE_ERROR, f"PID-3 INS {problem}", "PID^1^3")
    if not ipp:
        raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING,
                       "PID-3 has no IPP (identifier type PI)", "PID^1^3")
    return ins, ins_oid, ipp, ipp_authority, ipp_oid


def nir_problem(nir: str) -> str:
    """'' when ``nir`` is a well-formed 15-character NIR with a correct control key."""
    if len(nir) != 15:
        return "is not 15 characters long (13-character NIR + 2-digit key)"
    body = nir[:13].upper()
    # Corsica: department 2A / 2B stands for 19 / 18 in the key computation.
    body = body[:5] + {"2A": "19", "2B": "18"}.get(body[5:7], body[5:7]) + body[7:]
    if not (body.isdigit() and nir[13:].isdigit()):
        return "is not numeric"
    if 97 - int(body) % 97 != int(nir[13:]):
        return "has a wrong control key"
    return ""


def _observations(msg: hl7.Message) -> tuple[Any, dict[str, bool]]:
    """The document OBX (ED, base64 XML) and the MetaDMPMSS flags."""
    document = None
    flags: dict[str, bool] = {}
    for obx in _segments(msg, "OBX"):
        if _get(obx, 3, 1, 3) == META_SYSTEM:
            name, value = _get(obx, 3, 1, 1), _get(obx, 5, 1, 1).upper()
            if value not in ("Y", "N"):
                raise Hl7Error("AE", ErrorCode.TABLE_VALUE_NOT_FOUND,
                               f"MetaDMPMSS flag {name} is {value!r}, expected Y or N",
                               f"OBX^{_get(obx, 1) or 1}^5")
            flags[name] = value == "Y"
        elif document is None and _get(obx, 2) == "ED":
            document = obx
    return document, flags


def _action(mtype: str, trigger: str, order_control: str, status: str) -> Action:
    """MDM: the trigger (T02/T10/T04). ORU: ORC-1 CA or OBX-11 D withdraw, C replaces,
    F publishes; any other status (P preliminary, ...) is refused: only validated reports go."""
    if mtype == "MDM":
        return {"T02": Action.PUBLISH, "T10": Action.REPLACE, "T04": Action.WITHDRAW}[trigger]
    if order_control == "CA" or status == "D":
        return Action.WITHDRAW
    if status == "C":
        return Action.REPLACE
    if status == "F":
        return Action.PUBLISH
    raise Hl7Error("AE", ErrorCode.TABLE_VALUE_NOT_FOUND,
                   f"OBX-11 result status {status!r} is not F (final), C (correction) or "
                   "D (deletion); only validated reports are published", "OBX^1^11")


def _document(obx: Any) -> bytes:
    """OBX-5 as ED: ^TEXT^XML^Base64^<data>; the CDA bytes."""
    kind, subtype, encoding = (_get(obx, 5, 1, 2).upper(), _get(obx, 5, 1, 3).upper(),
                               _get(obx, 5, 1, 4).upper())
    location = f"OBX^{_get(obx, 1) or 1}^5"
    if kind not in ("TEXT", "APPLICATION", "MULTIPART") or subtype != "XML":
        raise Hl7Error("AE", ErrorCode.DATA_TYPE_ERROR,
                       f"OBX-5 is {kind}/{subtype}, expected an XML CDA (^TEXT^XML^Base64^...)",
                       location)
    if encoding != "BASE64":
        raise Hl7Error("AE", ErrorCode.DATA_TYPE_ERROR,
                       f"OBX-5 encoding is {encoding!r}, expected Base64", location)
    data = _get(obx, 5, 1, 5)
    if not data:
        raise Hl7Error("AE", ErrorCode.REQUIRED_FIELD_MISSING, "OBX-5 carries no data", location)
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Hl7Error("AE", ErrorCode.DATA_TYPE_ERROR, "OBX-5 is not valid base64",
                       location) from None


def _sender(msg: hl7.Message) -> Sender | None:
    for prt in _segments(msg, "PRT"):
        if _get(prt, 4, 1, 1) != "SB":
            continue
        return Sender(
            rpps=_get(prt, 5, 1, 1),
            rpps_oid=_get(prt, 5, 1, 9, 2),
            family=_get(prt, 5, 1, 2),
            given=_get(prt, 5, 1, 3),
            organisation_id=_get(prt, 8, 1, 10),
            organisation_oid=_get(prt, 8, 1, 6, 2),
            organisation_type=_get(prt, 8, 1, 7),
            organisation_name=_get(prt, 8, 1, 1),
        )
    return None


# --- report vs its CDA ---------------------------------------------------------------------


def inconsistencies(report: Report, cda: CdaReport, check_accession: bool = True) -> list[str]:
    """Why the HL7 message and its CDA do not describe the same patient and exam ([] if they
    do). Reasons name the fields, never their values. The accession is compared only when the
    message carries one (OBR-18) and ``check_accession`` is set."""
    reasons = []
    if (report.ins, report.ins_oid) != (cda.ins, cda.ins_oid):
        reasons.append("the INS of PID-3 differs from the INS of the CDA recordTarget")
    if report.ipp_oid and cda.ipp_oid and report.ipp_oid != cda.ipp_oid:
        reasons.append("the IPP authority OID of PID-3 differs from the CDA recordTarget")
    elif report.ipp != cda.ipp:
        reasons.append("the IPP of PID-3 differs from the IPP of the CDA recordTarget")
    if check_accession and report.accession:
        cda_accession = cda.accession.extension if cda.accession else ""
        if report.accession != cda_accession:
            reasons.append("the accession number of OBR-18 differs from the CDA "
                           "inFulfillmentOf/order/accessionNumber")
    if report.document_number and report.document_number not in (cda.document_id.root,
                                                                 cda.document_id.extension):
        reasons.append("TXA-12 (document number) differs from the CDA id")
    return reasons


def read_report(text: str, max_cda_bytes: int | None = None,
                check_accession: bool = False) -> Report:
    """The whole intake check of one message: HL7, CDA and their consistency. The result has
    ``cda_report`` set when a CDA is present. Raises ``Hl7Error`` (``CdaError`` for the CDA)."""
    from appliance.hl7.cda import DEFAULT_MAX_CDA_BYTES, parse_cda

    report = parse_message(text)
    if report.cda is None:
        return report
    cda = parse_cda(report.cda, max_cda_bytes or DEFAULT_MAX_CDA_BYTES)
    reasons = inconsistencies(report, cda, check_accession=check_accession)
    if reasons:
        raise Hl7Error("AE", ErrorCode.APPLICATION_INTERNAL_ERROR,
                       "inconsistent identifiers: " + "; ".join(reasons), "PID^1^3")
    return dataclasses.replace(report, cda_report=cda)
