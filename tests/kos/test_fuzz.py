"""Hardened parsing: garbage, truncated or corrupted KOS files give KosParseError, nothing else."""

from __future__ import annotations

import io

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.dicom.kos import (
    KosParseError,
    KosRequest,
    RejectionRequest,
    build_kos,
    build_rejection_note,
    parse_kos,
    rejection_note,
)

from .conftest import PUBLIC_URL, make_instances, patient, study

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REQUEST = KosRequest(patient=patient(), study=study(),
                     instances=make_instances([("CT", 4), ("MR", 3)]), public_url=PUBLIC_URL)
GOOD = build_kos(REQUEST).data
GOOD_SOPS = {i.sop_instance_uid for i in REQUEST.instances}
NOTE = build_rejection_note(RejectionRequest("IPP1", "X^Y", study(), make_instances([("CT", 3)]))).data
PREFIX = b"\0" * 128 + b"DICM"


def parse_or_error(data: bytes):
    try:
        return parse_kos(data)
    except KosParseError as e:
        assert str(e)  # a readable reason
        return None


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    with pytest.raises(KosParseError):
        parse_kos(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_after_a_part10_prefix(data):
    assert parse_or_error(PREFIX + data) is None


def test_every_truncation_of_a_manifest_is_refused():
    small = build_kos(KosRequest(patient=patient(), study=study(),
                                 instances=make_instances([("CT", 1), ("MR", 1)]),
                                 public_url=PUBLIC_URL)).data
    escaped = []
    for cut in range(len(small)):
        try:
            parse_kos(small[:cut])
            escaped.append(cut)
        except KosParseError:
            pass
    assert escaped == []


@FUZZ
@given(st.integers(min_value=132, max_value=len(GOOD) - 1), st.integers(0, 255))
def test_one_corrupted_byte_never_escapes_as_another_exception(pos, value):
    data = bytearray(GOOD)
    data[pos] = value
    m = parse_or_error(bytes(data))
    if m is not None:  # a change in a value may still leave a well-formed manifest
        assert len(m.sop_instance_uids) <= len(GOOD_SOPS)


@FUZZ
@given(st.lists(st.tuples(st.integers(132, len(GOOD) - 1), st.binary(min_size=1, max_size=8)),
                min_size=1, max_size=5))
def test_spliced_bytes(edits):
    data = bytearray(GOOD)
    for pos, chunk in edits:
        data[pos:pos] = chunk
    parse_or_error(bytes(data))


def test_every_truncation_of_a_rejection_note_is_refused():
    escaped = []
    for cut in range(len(NOTE)):
        try:
            rejection_note(NOTE[:cut])
            escaped.append(cut)
        except KosParseError:
            pass
    assert escaped == []


@FUZZ
@given(st.integers(min_value=132, max_value=len(NOTE) - 1), st.integers(0, 255))
def test_corrupted_rejection_note(pos, value):
    data = bytearray(NOTE)
    data[pos] = value
    try:
        rejection_note(bytes(data))
    except KosParseError:
        pass


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(KosParseError, match="limit"):
        parse_kos(GOOD, max_bytes=len(GOOD) - 1)


def test_non_bytes_input_is_refused():
    with pytest.raises(KosParseError, match="expected bytes"):
        parse_kos("not bytes")  # type: ignore[arg-type]


def test_implicit_vr_manifest_from_another_box_is_read():
    # The ANS demonstrator writes Implicit VR Little Endian; the box must read either.
    ds = pydicom.dcmread(io.BytesIO(GOOD))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    m = parse_kos(buf.getvalue())
    assert m.sop_instance_uids == GOOD_SOPS


def test_a_manifest_without_content_is_refused():
    ds = pydicom.dcmread(io.BytesIO(GOOD))
    del ds.ContentSequence
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(KosParseError, match="ContentSequence"):
        parse_kos(buf.getvalue())


def test_a_bad_value_in_a_received_kos_is_never_logged(caplog):
    ds = pydicom.dcmread(io.BytesIO(GOOD))
    # pydicom logs the ill-formed values it validates on read (UIDs, in pydicom 3.0), quoted.
    ds["StudyInstanceUID"] = pydicom.DataElement(0x0020000D, "UI", "1.2.SECRET",
                                                 validation_mode=pydicom.config.IGNORE)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    caplog.clear()
    with caplog.at_level("DEBUG"), pytest.raises(KosParseError, match="StudyInstanceUID"):
        parse_kos(buf.getvalue())
    assert not any("SECRET" in r.getMessage() for r in caplog.records)
