"""Helpers shared by the HL7 tests: ANS placeholders, CDA swapping, a recording handler."""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from appliance.hl7.messages import Report, normalise, parse_hl7

DERIVED = Path("referencement-drimbox") / "hl7v2-derived"
_ids = itertools.count(1)


def fill(text: str, control_id: str | None = None) -> str:
    """Fill the ANS placeholders (README of hl7v2-derived): MSH-3..6, MSH-7 and MSH-10 both
    carry ``{{idMessage}}`` in the originals; MSH-7 gets a timestamp, MSH-10 a control id."""
    control_id = control_id or f"MSG{next(_ids):06d}"
    lines = normalise(text).split("\r")
    msh = lines[0].split("|")
    msh[6] = "20240105101500"  # MSH-7 (index 6: MSH-1 is the separator itself)
    msh[9] = control_id  # MSH-10
    lines[0] = "|".join(msh)
    out = "\r".join(lines)
    for key, value in {"applicationSupplier": "RIS_TEST", "facilitySupplier": "CLINIQUE_TEST",
                       "applicationReceiver": "DRIMBOX", "facilityReceiver": "SITE_SOURCE"}.items():
        out = out.replace("{{" + key + "}}", value)
    assert "{{" not in out, "a placeholder is left"
    return out


def ans_files(conformance_dir: Path) -> dict[str, Path]:
    files = sorted((conformance_dir / DERIVED).glob("examen-*/*.hl7"))
    if not files:
        pytest.skip(f"no HL7 messages under {conformance_dir / DERIVED}")
    return {f.name: f for f in files}


def replace_cda(message: str, cda: bytes) -> str:
    """The same message with another CDA in the document OBX-5."""
    old = parse_hl7(message).segments("OBX")[0].extract_field(1, 5, 1, 5)
    return message.replace(old, base64.b64encode(cda).decode("ascii"))


def cda_of(message: str) -> bytes:
    return base64.b64decode(parse_hl7(message).segments("OBX")[0].extract_field(1, 5, 1, 5))


class Recorder:
    """A handler that records what it receives (optionally raising or waiting first)."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.before: Callable[[Report], Awaitable[None]] | None = None

    async def __call__(self, report: Report) -> None:
        if self.before is not None:
            await self.before(report)
        self.reports.append(report)




def full_size(message: str) -> str:
    """The message with a CDA body as big as the original ANS ones (~175 kB PDF, ~325 kB)."""
    cda = cda_of(message)
    body = base64.b64encode(os.urandom(175_000))
    start = cda.index(b"<component>")
    big = (cda[:start] + b'<component><nonXMLBody><text mediaType="application/pdf" '
           b'representation="B64">' + body + b"</text></nonXMLBody></component>"
           b"</ClinicalDocument>")
    return replace_cda(message, big)
