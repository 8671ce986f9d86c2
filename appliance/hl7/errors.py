"""The one error type of the HL7 intake: it carries what the ACK must say.

Every refusal (parsing, CDA, consistency, or the handler's own) is an ``Hl7Error``; the MLLP server
turns it into an ``AE``/``AR`` ACK with an ERR segment. Reasons are sent back to the RIS and may be
logged, so they never contain patient data (no INS, IPP, name): they name fields, not values.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

AckCode = Literal["AE", "AR"]


class ErrorCode(IntEnum):
    """HL7 table 0357 (message error condition codes)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Hl7Error(Exception):
    """A refused message.

    ``ack_code``: ``AR`` when the message itself is not acceptable (type, version, processing id,
    framing, character set), ``AE`` when it is well formed but its content is wrong.
    ``location``: ERR-2 as ``SEG^seq^field`` (e.g. ``PID^1^3``), empty when not a field.
    """

    def __init__(self, ack_code: AckCode, hl7_error_code: int, reason: str,
                 location: str = "") -> None:
        super().__init__(reason)
        if ack_code not in ("AE", "AR"):
            raise ValueError(f"ack_code must be AE or AR, not {ack_code!r}")
        self.ack_code: AckCode = ack_code
        self.hl7_error_code = int(hl7_error_code)
        self.reason = reason
        self.location = location

    def __repr__(self) -> str:
        return (f"Hl7Error({self.ack_code!r}, {self.hl7_error_code}, {self.reason!r}, "
                f"{self.location!r})")


class CdaError(Hl7Error):
    """The CDA carried in OBX-5 is unusable (not XML, not a ClinicalDocument, a field missing)."""

    def __init__(self, reason: str, hl7_error_code: int = ErrorCode.DATA_TYPE_ERROR) -> None:
        super().__init__("AE", hl7_error_code, f"CDA: {reason}", "OBX^1^5")
