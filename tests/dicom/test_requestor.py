"""The C-MOVE requestor against a PACS that misbehaves on purpose.

Orthanc (tests/dicom/test_pacs_link.py) covers the moves that work and the failures a real PACS
reports. What Orthanc never does — abort mid-move, send garbage, stall, reject the association —
is played here by a scripted acceptor on a real socket (built on the SCP's own upper layer).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from appliance.dicom import dimse, requestor, ul

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _response(status: int, completed: int = 0, failed: int = 0, identifier: bool = False) -> bytes:
    """A C-MOVE-RSP command set (implicit VR LE), by hand: the same bytes a PACS sends."""
    def el(element: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, element, len(value)) + value

    body = (el(0x0002, str(MOVE).encode() + (b"\0" if len(str(MOVE)) % 2 else b""))
            + el(0x0100, struct.pack("<H", 0x8021)) + el(0x0120, struct.pack("<H", 1))
            + el(0x0800, struct.pack("<H", 0x0001 if identifier else 0x0101))
            + el(0x0900, struct.pack("<H", status))
            + el(0x1021, struct.pack("<H", completed)) + el(0x1022, struct.pack("<H", failed)))
    return el(0x0000, struct.pack("<L", len(body))) + body


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the A-ASSOCIATE-RQ and the C-MOVE-RQ with its identifier; answer the first."""
    _kind, body = await ul.read_pdu(reader, ul.MAX_ASSOCIATE_PDU)
    ac, _ = ul.accept(ul.decode_request(body), [build_context(MOVE)], 16384)
    writer.write(ac)
    for _ in range(2):  # command set, then identifier
        await ul.read_pdu(reader, 1 << 20)


async def _move(script: Script, response_timeout: float = 5.0) -> tuple[object, object]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
            await writer.drain()
            await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID = "STUDY", "1.2.3"
    try:
        return await requestor.c_move(host="127.0.0.1", port=port, calling_ae="BOX",
                                      called_ae="PACS", destination="BOX", sop_class=str(MOVE),
                                      identifier=ident, max_pdu=16384, connect_timeout=2.0,
                                      response_timeout=response_timeout)
    finally:
        server.close()


async def test_pending_then_final_failure_with_identifier() -> None:
    failed = Dataset()
    failed.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, failed)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        for n in range(3):
            writer.write(ul.p_data(1, _response(0xFF00, completed=n)))
        writer.write(ul.p_data(1, _response(0xA702, completed=3, failed=2, identifier=True)))
        writer.write(ul.p_data(1, buf.getvalue(), header=0x02))
        kind, _ = await ul.read_pdu(reader, 1 << 20)
        assert kind == ul.RELEASE_RQ
        writer.write(ul.RELEASE_RP_PDU)

    final, ident = await _move(script)
    assert isinstance(final, Dataset) and final.Status == 0xA702
    assert final.NumberOfCompletedSuboperations == 3 and final.NumberOfFailedSuboperations == 2
    assert isinstance(ident, Dataset)
    assert list(ident.FailedSOPInstanceUIDList) == ["1.2.3.4", "1.2.3.5"]


async def test_rejected_association_is_unavailable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ul.read_pdu(reader, ul.MAX_ASSOCIATE_PDU)
        writer.write(ul.reject_pdu(ul.REJECT_PERMANENT, ul.SOURCE_USER, ul.REASON_CALLING_AE))

    with pytest.raises(requestor.MoveUnavailable, match="rejected"):
        await _move(script)


async def test_unreachable_pacs_is_unavailable() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    with pytest.raises(requestor.MoveUnavailable, match="cannot connect"):
        await requestor.c_move(host="127.0.0.1", port=port, calling_ae="BOX", called_ae="PACS",
                               destination="BOX", sop_class=str(MOVE), identifier=Dataset(),
                               max_pdu=16384, connect_timeout=1.0, response_timeout=1.0)


@pytest.mark.parametrize("after", [
    ul.abort_pdu(),                                   # the PACS aborts mid-move
    ul.p_data(1, b"\x00" * 7),                        # a command set cut inside an element
    b"\x09\x00\x00\x00\x00\x00",                      # an unknown PDU type
    ul.p_data(1, b"", header=0x02),                   # data set before any command
    b"",                                              # the PACS closes the connection
], ids=["abort", "cut-command", "pdu-type", "data-first", "closed"])
async def test_broken_responses_are_no_final_response(after: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        writer.write(ul.p_data(1, _response(0xFF00)))
        writer.write(after)

    assert await _move(script) == (None, None)


async def test_silent_pacs_times_out_as_no_final_response() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        writer.write(ul.p_data(1, _response(0xFF00)))
        await asyncio.sleep(3)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await _move(script, response_timeout=0.5) == (None, None)
    assert loop.time() - t0 < 2.5


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300))
async def test_fuzzed_responses_never_escape_as_other_errors(garbage: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        writer.write(garbage)

    final, ident = await _move(script, response_timeout=0.3)
    assert final is None or isinstance(final, Dataset)


def test_response_command_sets_decode() -> None:
    cmd = dimse.decode(_response(0xFF00, completed=4), response=True)
    assert (cmd.field, cmd.message_id, cmd.status) == (0x8021, 1, 0xFF00)
    with pytest.raises(dimse.CommandError):
        dimse.decode(_response(0xFF00)[:-6], response=True)
