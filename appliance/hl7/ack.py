"""Original-mode ACK messages (HL7 v2.5 §2.9.2): AA, or AE/AR with an ERR segment.

The incoming header is read with python-hl7, and python-hl7 escapes the text we send back. The
ACK itself is assembled here: python-hl7's ``Message.create_ack`` fails on a header whose MSH-9
has no components (the very messages an AR must answer) and has no MSA-3, MSH-18 or ERR.
Echoing rules: sending and receiving application/facility swapped, trigger event, processing id,
version (MSH-12) and character set (MSH-18) of the incoming message, MSA-2 = its control id.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import hl7

from appliance.hl7.errors import ERROR_TEXT, ErrorCode, Hl7Error
from appliance.hl7.messages import normalise

_ESCAPER = hl7.parse("MSH|^~\\&|")  # standard delimiters, used for escaping only


def incoming_header(text: str) -> Any:
    """The incoming message's MSH segment parsed by python-hl7, or None when unusable."""
    first = normalise(text).split("\r", 1)[0]
    if not (first.startswith("MSH") and len(first) >= 8):
        return None
    try:
        return hl7.parse(first).segment("MSH")
    except Exception:  # python-hl7 raises various errors on malformed input
        return None


def _msh(header: Any, index: int) -> str:
    """MSH-``index`` as received (still escaped), '' when absent."""
    if header is None:
        return ""
    try:
        value = str(header(index))
    except (IndexError, KeyError, TypeError):
        return ""
    return "".join(c for c in value if c >= " ")


def _trigger(header: Any) -> str:
    if header is None:
        return ""
    try:
        return str(header.extract_field(1, 9, 1, 2, 1))
    except (IndexError, KeyError, TypeError, ValueError):
        return ""


def build_ack(incoming: str, error: Hl7Error | None = None,
              application: str | None = None, facility: str | None = None) -> str:
    """The ACK text (segments separated by CR, not framed) answering ``incoming``.

    ``error`` None gives ``AA``; otherwise its ack code, MSA-3 = reason and one ERR segment.
    ``application``/``facility`` set MSH-3/4 (default: the incoming MSH-5/6).
    """
    header = incoming_header(incoming)
    code = "AA" if error is None else error.ack_code
    fields = [
        "MSH", "^~\\&",
        _escape(application) if application is not None else _msh(header, 5),
        _escape(facility) if facility is not None else _msh(header, 6),
        _msh(header, 3), _msh(header, 4),
        datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S+0000"), "",
        f"ACK^{_escape(_trigger(header))}^ACK", _control_id(),
        _msh(header, 11) or "P", _msh(header, 12) or "2.5",
    ]
    charset = _msh(header, 18)
    if charset:
        fields += [""] * 5 + [charset]
    msh = "|".join(fields)
    msa = f"MSA|{code}|{_msh(header, 10)}"
    if error is None:
        return f"{msh}\r{msa}"
    return f"{msh}\r{msa}|{_escape(error.reason)}\r{_err_segment(error)}"


def _err_segment(error: Hl7Error) -> str:
    """ERR-2 location, ERR-3 code^text^HL70357, ERR-4 severity E, ERR-8 user message."""
    try:
        text = ERROR_TEXT[ErrorCode(error.hl7_error_code)]
    except ValueError:
        text = ""
    location = "^".join(_escape(p) for p in error.location.split("^")) if error.location \
        else ""
    return (f"ERR||{location}|{error.hl7_error_code}^{text}^HL70357|E||||"
            f"{_escape(error.reason)}")


def _escape(text: str) -> str:
    """HL7 escaping of |^~\\& and removal of the control characters framing would choke on."""
    cleaned = "".join(c if c >= " " else " " for c in text)
    return str(_ESCAPER.escape(cleaned))


def _control_id() -> str:
    return uuid.uuid4().hex[:20].upper()


def parse_ack(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(MSA-1, MSA-2, [(ERR-3.1, ERR-8 unescaped)]) of an ACK; for the client and the tests."""
    msg = hl7.parse(normalise(text))
    msa = msg.segment("MSA")
    errors: list[tuple[str, str]] = []
    for seg in msg:
        if str(seg[0][0]) == "ERR":
            errors.append((_field(seg, 3), _field(seg, 8)))
    return str(msa(1)), str(msa(2)), errors


def _field(seg: hl7.Segment, index: int) -> str:
    try:
        return str(seg.extract_field(1, index, 1, 1, 1))
    except IndexError:
        return ""
