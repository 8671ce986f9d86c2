"""The SCP's hand-written wire formats: PDV walking, DIMSE command sets, the Part 10 header.

Each is checked against pydicom / pynetdicom, which encode and decode the same structures, and
fuzzed: any input gives a value or the module's own typed error, never another exception.
"""

from __future__ import annotations

import asyncio
import io
import struct

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian
from appliance.dicom import dimse, ul
from appliance.dicom.ingest import part10_header

from .conftest import store_rq_pdus

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_pynetdicom_request_is_walked_and_decoded() -> None:
    data = bytes(range(256)) * 200
    command, data_set = bytearray(), bytearray()
    for pdu in store_rq_pdus(CT, "1.2.3.4", data, context_id=3, max_pdu=4096):
        for context_id, header, fragment in ul.pdvs(pdu[6:]):
            assert context_id == 3
            (command if header & 1 else data_set).extend(fragment)
    assert bytes(data_set) == data
    cmd = dimse.decode(bytes(command))
    assert (cmd.field, cmd.message_id, cmd.sop_class_uid, cmd.sop_instance_uid) == (
        dimse.C_STORE_RQ, 7, CT, "1.2.3.4")
    assert cmd.has_data_set


@pytest.mark.parametrize("comment", ["", "Out of resources: store limit of 10 bytes reached",
                                     "x" * 100])
def test_store_response_reads_back_with_pydicom(comment: str) -> None:
    rq = dimse.Command(dimse.C_STORE_RQ, 9, 0x0000, CT, "1.2.3.45")
    raw = dimse.response(rq, 0xA700 if comment else 0, comment)
    ds = read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.CommandDataSetType) == (
        0x8001, 9, 0x0101)
    assert ds.AffectedSOPClassUID == CT and ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.Status == (0xA700 if comment else 0)
    assert ds.get("ErrorComment", "") == comment[:64]


def test_echo_response_has_no_instance_uid() -> None:
    rq = dimse.Command(dimse.C_ECHO_RQ, 1, dimse.NO_DATA_SET, "1.2.840.10008.1.1")
    ds = read_dataset(io.BytesIO(dimse.response(rq, 0)), is_implicit_VR=True,
                      is_little_endian=True)
    assert ds.CommandField == 0x8030 and "AffectedSOPInstanceUID" not in ds


def test_part10_header_is_what_pydicom_reads() -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, "1.2.3.4.5", "P1"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    body = buf.getvalue()
    f = pydicom.dcmread(io.BytesIO(part10_header(CT, "1.2.3.4.5", ExplicitVRLittleEndian)
                                   + body))
    meta = f.file_meta
    assert meta.MediaStorageSOPClassUID == CT and meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.ImplementationClassUID == ul.IMPLEMENTATION_UID
    assert f.PatientID == "P1"


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x09\x01\x03abc",
                                  b"\x00\x00\x00\x02\x01\x07", b"\x00\x00\x00\x01\x01\x03"],
                         ids=["no-pdv", "cut-header", "beyond-pdu", "reserved-bits", "short"])
def test_bad_pdvs_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ul.ProtocolError):
        list(ul.pdvs(body))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_pdvs_and_commands_give_values_or_typed_errors(data: bytes) -> None:
    try:
        for _cx, header, fragment in ul.pdvs(data):
            assert header <= 3 and isinstance(fragment, memoryview)
    except ul.ProtocolError:
        pass
    try:
        cmd = dimse.decode(data)
        assert 0 <= cmd.field <= 0xFFFF
    except dimse.CommandError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_association_requests_are_protocol_errors(body: bytes) -> None:
    try:
        ul.decode_request(body)
    except ul.ProtocolError:
        pass


def test_oversized_pdu_is_refused_before_it_is_read() -> None:
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">BxL", ul.P_DATA, 1 << 30))
        with pytest.raises(ul.ProtocolError, match="exceeds"):
            await ul.read_pdu(reader, 131072)

    asyncio.run(run())
