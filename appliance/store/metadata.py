"""DICOM JSON metadata of one instance, computed once at ingest (PS3.18 F.2).

Bulk data (PixelData and any binary element over the threshold) is replaced by a ``BulkDataURI``.
URIs are stored relative to a placeholder base, :data:`BASE`, that the DICOMweb server replaces with
its own root when it serves the metadata: the same store answers on several host names.

Speed: this runs for every received instance, before the C-STORE response, and pydicom's
``to_json_dict`` was the largest cost of ingest (~0.7 ms of ~1.5 ms of CPU for a CT slice). So the
common elements — ASCII text, numbers, binary — are encoded here straight from pydicom's raw
elements, following pydicom's own decoding rules; everything else (sequences, person names, other
character sets, anything unusual) goes through pydicom, element by element. The output is the same
JSON either way: ``tests/foundation/test_metadata.py`` compares the two on generated, conformance
and fuzzed instances. Hand-written for speed only; pydicom stays the reference.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

BASE = "{{DICOMWEB_BASE}}"
BULK_THRESHOLD = 1024  # bytes of base64; smaller binary values are inlined

# Binary values whose base64 is longer than BULK_THRESHOLD become bulk data (pydicom's rule).
_INLINE_MAX = (BULK_THRESHOLD // 4) * 3

# pydicom's decoders, by VR: how a raw text value becomes a list of strings.
_SPLIT_WHOLE = frozenset({"CS", "AS", "DA", "TM", "DT", "UI"})   # rstrip all, then split
_SPLIT_EACH = frozenset({"SH", "LO"})                             # split, then rstrip each
_SINGLE = frozenset({"LT", "ST", "UT"})                           # no split, rstrip
_BINARY = frozenset({"OB", "OW", "OF", "OD", "OL", "OV"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_ENCODED_HERE = _SPLIT_WHOLE | _SPLIT_EACH | _SINGLE | _BINARY | set(_NUMBERS) | {"IS", "DS", "PN"}
_IS = re.compile(r"[+-]?[0-9]+")
_UI = re.compile(r"[0-9.]*")
_CONTROLS_OK = re.compile(r"[\x20-\x7e\t\n\f\r]*")
# Every character set pydicom knows decodes ASCII bytes as ASCII, except after an ISO 2022 escape.
_ESC = b"\x1b"


def as_text(elements: dict[str, Any]) -> str:
    """A DICOM JSON object as the compact text the store keeps."""
    return json.dumps(elements, separators=(",", ":"), ensure_ascii=False)


def instance_elements(ds: Dataset, study_uid: str, series_uid: str,
                      sop_uid: str) -> dict[str, Any]:
    """The instance's DICOM JSON object: ``{"GGGGEEEE": {"vr": …, "Value": […]}, …}``."""
    instance_root = f"{BASE}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"

    def bulk_uri(tag: int) -> str:
        if tag == 0x7FE00010:
            # PixelData: OHIF and others fetch it per frame; point at the frames resource.
            return f"{instance_root}/frames/1"
        return f"{instance_root}/bulkdata/{tag:08X}"

    def bulk(elem: DataElement) -> str:
        return bulk_uri(int(elem.tag))

    out: dict[str, Any] = {}
    for tag in ds.keys():
        raw = ds.get_item(tag)  # not ds[tag]: that would decode the element
        fast = _fast(raw, bulk_uri) if isinstance(raw, RawDataElement) else None
        out[f"{tag:08X}"] = fast if fast is not None else ds[tag].to_json_dict(
            bulk_data_element_handler=bulk, bulk_data_threshold=BULK_THRESHOLD)
    return out


def _fast(raw: RawDataElement, bulk_uri: Any) -> dict[str, Any] | None:
    """The JSON of a raw element encoded directly, or None for pydicom to do it."""
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, when it has a single one
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    value = raw.value
    if not value:
        return {"vr": vr} if vr in _ENCODED_HERE else None
    if vr in _BINARY:
        if len(value) > _INLINE_MAX:
            return {"vr": vr, "BulkDataURI": bulk_uri(int(raw.tag))}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        size = struct.calcsize("<" + code)  # standard sizes: "L" is 8 bytes natively
        if len(value) % size or not raw.is_little_endian:
            return None
        numbers = list(struct.unpack(f"<{len(value) // size}{code}", value))
        if code in "fd" and not all(map(math.isfinite, numbers)):
            return None
        return {"vr": vr, "Value": numbers}
    if not value.isascii() or _ESC in value:
        return None
    text = value.decode("ascii")
    # Control characters (other than the text VRs' line breaks and tabs) are rare and pydicom's
    # value classes treat some specially (UID strips them): leave those values to pydicom.
    if not (text.isprintable() or (vr in _SINGLE and _CONTROLS_OK.fullmatch(text))):
        return None
    if vr in _SPLIT_WHOLE:
        items = text.rstrip(" \x00").split("\\")
    elif vr in _SPLIT_EACH:
        items = [v.rstrip("\x00 ") for v in text.split("\\")]
    elif vr in _SINGLE:
        items = [text.rstrip("\x00 ")]
    elif vr == "PN":
        if "=" in text:  # ideographic or phonetic groups: pydicom's PersonName
            return None
        names = text.rstrip("\x00 ").split("\\")
        if "" in names:
            return None
        return {"vr": vr, "Value": [{"Alphabetic": n} for n in names]}
    elif vr == "IS":
        items = [v.strip(" \x00") for v in text.split("\\")]
        if not all(_IS.fullmatch(v) for v in items):
            return None
        return {"vr": vr, "Value": [int(v) for v in items]}
    elif vr == "DS":
        if "_" in text:  # float() takes "1_0"; DICOM does not
            return None
        try:
            numbers = [float(v) for v in text.split("\\")]
        except ValueError:
            return None
        if not all(map(math.isfinite, numbers)):
            return None
        return {"vr": vr, "Value": numbers}
    else:
        return None
    if "" in items:  # empty components: pydicom's VM and padding rules decide
        return None
    if vr == "UI" and not all(_UI.fullmatch(v) for v in items):
        return None
    return {"vr": vr, "Value": items}
