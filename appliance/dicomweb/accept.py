"""HTTP ``Accept`` / ``Accept-Encoding`` parsing and the choice of a DICOM representation.

Hand-written: aiohttp parses no Accept header, and DICOMweb needs the ``type`` and
``transfer-syntax`` parameters of each media range (PS3.18 §8.7.3), which generic helpers drop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"   # PS3.18 §8.7.3.5.2: the default when none is named
MAX_HEADER_CHARS = 8192

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Unquoted values may hold '/' (OHIF sends type=application/octet-stream): accepted, leniently.
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*([^;,\"\s]+|\"(?:[^\"\\]|\\.)*\")")
_RANGE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})")
_Q = re.compile(r"(0(\.\d{0,3})?|1(\.0{0,3})?)")


class BadHeader(ValueError):
    """The header is malformed; the message says where."""


class NotAcceptable(ValueError):
    """No offered representation fits the Accept header; the message says why."""


@dataclass(frozen=True)
class MediaRange:
    type: str
    subtype: str
    q: float = 1.0
    params: dict[str, str] = field(default_factory=dict)

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"


def _split(header: str) -> list[str]:
    """Split on commas that are not inside a quoted string."""
    out: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for c in header:
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    if quoted:
        raise BadHeader("unterminated quoted string")
    out.append("".join(cur))
    return [p for p in out if p.strip()]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges with q > 0, highest q first (header order among equals)."""
    if header is None or not header.strip():
        return []
    if len(header) > MAX_HEADER_CHARS:
        raise BadHeader("header too long")
    ranges = []
    for item in _split(header):
        m = _RANGE.match(item)
        if not m:
            raise BadHeader(f"{item.strip()[:60]!r} is not a media range like type/subtype")
        params: dict[str, str] = {}
        q = 1.0
        pos = m.end()
        while pos < len(item.rstrip()):
            p = _PARAM.match(item, pos)
            if not p:
                raise BadHeader(f"bad parameter in {item.strip()[:60]!r}")
            name, value = p.group(1).lower(), p.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name == "q":
                if not _Q.fullmatch(value):
                    raise BadHeader(f"q must be a number from 0 to 1, got {value[:20]!r}")
                q = float(value)
            else:
                params[name] = value
            pos = p.end()
        if q > 0:
            ranges.append(MediaRange(m.group(1).lower(), m.group(2).lower(), q, params))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding allows gzip (explicitly or through ``*``) with q > 0."""
    if not header:
        return False
    verdict: dict[str, bool] = {}
    for item in header.split(","):
        name, _, rest = item.strip().partition(";")
        q = 1.0
        m = re.search(r"q\s*=\s*([0-9.]+)", rest)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        verdict[name.strip().lower()] = q > 0
    return verdict.get("gzip", verdict.get("x-gzip", verdict.get("*", False)))


def accepts_json(header: str | None) -> bool:
    """True when a DICOM JSON answer (application/dicom+json) fits the Accept header."""
    ranges = parse_accept(header)
    if not ranges:
        return True
    return any(r.media_type in ("*/*", "application/*", "application/dicom+json",
                                "application/json") for r in ranges)


def choose_instance(header: str | None, stored_syntax: str) -> tuple[bool, str]:
    """(multipart?, transfer syntax) for one stored instance, or NotAcceptable.

    Only the stored syntax can be served (no transcoding yet): it is chosen when the client
    names it or ``*``, or accepts anything. A request naming no syntax asks for Explicit VR
    Little Endian (the standard's default).
    """
    ranges = parse_accept(header)
    if not ranges:
        return True, stored_syntax
    reasons = []
    for r in ranges:
        if r.media_type in ("*/*", "multipart/*"):
            return True, stored_syntax
        if r.media_type == "multipart/related":
            multipart = True
            kind = r.params.get("type", "application/dicom").lower()
        elif r.media_type in ("application/dicom", "application/*"):
            multipart, kind = False, "application/dicom"
        else:
            reasons.append(f"{r.media_type} is not offered")
            continue
        if kind != "application/dicom":
            reasons.append(f"type={kind} is not offered for an instance")
            continue
        wanted = r.params.get("transfer-syntax", EXPLICIT_VR_LE)
        if wanted in ("*", stored_syntax):
            return multipart, stored_syntax
        reasons.append(f"transfer-syntax={wanted[:64]} would need transcoding")
    raise NotAcceptable("the instance is stored as transfer syntax " + stored_syntax
                        + " and this server does not transcode yet: " + "; ".join(reasons))
