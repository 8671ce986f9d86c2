"""The ingest-time DICOM JSON (appliance/store/metadata.py) is pydicom's, element for element.

The metadata encodes common elements itself, for speed; pydicom's ``to_json_dict`` is the
reference. Compared on generated CT and MR, on hand-made edge cases of every VR it encodes, and
on fuzzed values: for any input both give the same JSON, or both fail.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance import generate
from appliance.store.metadata import BASE, as_text, instance_elements


def _reference(ds: Dataset) -> dict:
    root = (f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")

    def bulk(elem: pydicom.DataElement) -> str:
        tag = int(elem.tag)
        return f"{root}/frames/1" if tag == 0x7FE00010 else f"{root}/bulkdata/{tag:08X}"

    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)


def _both(data: bytes) -> tuple[str, str]:
    """(ours, pydicom's) JSON text for one Part 10 file, each read afresh (raw elements), or the
    name of the error."""
    out = []
    for encode in (lambda ds: json.loads(as_text(instance_elements(
                       ds, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))),
                   _reference):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid values
            try:  # as text: NaN must equal NaN
                out.append(json.dumps(encode(pydicom.dcmread(io.BytesIO(data))),
                                      sort_keys=True))
            except Exception as e:  # both must refuse the same input
                out.append(type(e).__name__)
    return out[0], out[1]


def test_generated_ct_and_mr_give_pydicom_json(tmp_path: Path) -> None:
    files = (generate.synthetic_study("CT", 3, out_dir=tmp_path / "ct")
             + generate.synthetic_study("MR", 3, out_dir=tmp_path / "mr"))
    for f in files:
        ours, ref = _both(f.read_bytes())
        assert ours.startswith("{") and ours == ref, f.name


def test_implicit_vr_copy_gives_pydicom_json(tmp_path: Path) -> None:
    (f,) = generate.synthetic_study("CT", 1, out_dir=tmp_path)
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    ours, ref = _both(buf.getvalue())
    assert ours.startswith("{") and ours == ref
    assert json.loads(ours)["7FE00010"]["BulkDataURI"].endswith("/frames/1")


def _element_file(tag: int, vr: str, value: bytes, implicit: bool = False,
                  charset: str | None = None) -> bytes:
    """A minimal Part 10 file whose element ``tag`` holds exactly the bytes ``value``."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        "1.2.3.4", "1.2.3.5", "1.2.3.6")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        elem = head + struct.pack("<L", len(value))
    elif vr in _LONG:
        elem = head + vr.encode() + b"\0\0" + struct.pack("<L", len(value))
    else:
        elem = head + vr.encode() + struct.pack("<H", len(value))
    return buf.getvalue() + elem + value  # after the UIDs: tag order is kept


def _first_tag(vr: str) -> int:
    """A current dictionary tag of this VR after the file's UIDs (elements are appended)."""
    return min(tag for tag, (v, _vm, _name, retired, _kw) in DicomDictionary.items()
               if v == vr and not retired and 0x00280000 < tag < 0x7FE00000 and tag & 0xFFFF)


# An element of each VR the metadata encodes itself, and of some it leaves to pydicom.
ELEMENTS = {vr: _first_tag(vr) for vr in (
    "CS", "DA", "TM", "DT", "AS", "SH", "LO", "LT", "ST", "UT", "PN", "IS", "DS", "US", "SS",
    "UL", "SL", "FL", "FD", "OB", "OW", "OF", "OD", "OL", "AE", "UI", "UC", "UR", "AT", "SQ")}
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


EDGE_CASES = [
    ("CS", b"MONOCHROME2"), ("CS", b"A \\B "), ("CS", b"A\\\\B"), ("CS", b"  "), ("CS", b""),
    ("DA", b"20261201"), ("TM", b"101112.123 "), ("DT", b"20261201101112"),
    ("AS", b"045Y"), ("SH", b"ACC 1 \\ X "), ("LO", b"Chest\\Abdomen  "), ("LO", b"\\"),
    ("LT", b"line one\\ still one  "), ("ST", b"\x00"), ("UT", b"text\\with\\backslashes "),
    ("PN", b"DOE^JOHN"), ("PN", b"DOE^JOHN\\ROE^JANE "), ("PN", b"DOE^JOHN=D^J"),
    ("PN", b"DOE^JOHN=="), ("PN", b"\\DOE"),
    ("IS", b"12"), ("IS", b" +7 \\-3"), ("IS", b"007"), ("IS", b"1.0"), ("IS", b"x"),
    ("IS", b"1\\\\2"), ("DS", b"0.488281\\0.488281"), ("DS", b" 1e3 "), ("DS", b"1_0"),
    ("DS", b"NaN"), ("DS", b"inf"), ("DS", b"abc"), ("DS", b"-0"),
    ("US", struct.pack("<H", 512)), ("US", struct.pack("<3H", 1, 2, 3)), ("US", b"\x01"),
    ("SS", struct.pack("<h", -5)), ("FL", struct.pack("<f", 1.5)),
    ("FL", struct.pack("<f", float("nan"))), ("FD", struct.pack("<2d", 0.1, -2.0)),
    ("OB", b"\x01\x02\x03"), ("OB", bytes(800)), ("OW", bytes(700)), ("OB", b""),
    ("AE", b" AET "), ("UI", b"1.2.3\x00"), ("UI", b"1.2\\3.4"),
    ("LO", "é".encode("latin-1")), ("LO", b"\x1b$B"), ("UC", b"a\\b"), ("UR", b"http://x "),
    ("AT", struct.pack("<HH", 0x10, 0x20)), ("SL", struct.pack("<l", -1)), ("OF", bytes(8)),
    ("SQ", b""), ("SQ", b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
]


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(("vr", "value"), EDGE_CASES)
def test_edge_cases_give_pydicom_json(vr: str, value: bytes, implicit: bool) -> None:
    tag = ELEMENTS[vr]
    ours, ref = _both(_element_file(tag, vr, value, implicit=implicit))
    assert ours == ref


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"])
def test_character_sets_give_pydicom_json(charset: str) -> None:
    for value in ("Müller^Anna".encode("latin-1"), "Müller^Anna".encode("utf-8"),
                  b"\x1b$B;3ED\x1b(B^\x1b$B5W\x1b(B", b"plain"):
        ours, ref = _both(_element_file(ELEMENTS["PN"], "PN", value, charset=charset))
        assert ours == ref


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ELEMENTS)), st.binary(max_size=40), st.booleans())
def test_fuzzed_values_give_pydicom_json(vr: str, value: bytes, implicit: bool) -> None:
    ours, ref = _both(_element_file(ELEMENTS[vr], vr, value, implicit=implicit))
    assert ours == ref
