"""C-MOVE as requestor on the box's own upper layer (appliance/dicom/ul.py).

A PACS answers a C-MOVE with one "pending" response per instance it sends, while the instances
themselves arrive on the box's SCP in the same process. Read by pynetdicom, every pending response
goes through two polling threads and a full pydicom decode, all competing with that SCP for the
interpreter. Here a pending response is a few bytes read on an event loop; only the final one is
decoded with pydicom.
"""

from __future__ import annotations

import asyncio
import io

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import dimse, ul


class MoveUnavailable(ConnectionError):
    """The association could not be made (refused, unreachable, broken)."""


async def c_move(*, host: str, port: int, calling_ae: str, called_ae: str, destination: str,
                 sop_class: str, identifier: Dataset, max_pdu: int, connect_timeout: float,
                 response_timeout: float) -> tuple[Dataset | None, Dataset | None]:
    """Ask for the move and wait for its end: (final status, identifier of the final response).

    (None, None) when no final response came (peer abort, ``response_timeout`` without any
    response, broken PDUs): the caller reports that as the PACS not answering.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                connect_timeout)
    except (OSError, TimeoutError) as e:
        raise MoveUnavailable(f"cannot connect to {host}:{port}: {e}") from None
    try:
        writer.write(ul.request_pdu(calling_ae, called_ae, sop_class,
                                    [ExplicitVRLittleEndian, ImplicitVRLittleEndian], max_pdu))
        try:
            async with asyncio.timeout(connect_timeout):
                kind, body = await ul.read_pdu(reader, ul.MAX_ASSOCIATE_PDU)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError,
                ul.ProtocolError) as e:
            raise MoveUnavailable(f"no answer to the association request: {e!r}") from None
        if kind == ul.ASSOCIATE_RJ:
            raise MoveUnavailable("association rejected")
        if kind != ul.ASSOCIATE_AC:
            raise MoveUnavailable("association aborted")
        accepted = ul.decode_accept(body)
        if 1 not in accepted:
            raise MoveUnavailable("the PACS refused the C-MOVE presentation context")
        syntax = UID(accepted[1])
        writer.write(ul.p_data(1, dimse.move_request(1, sop_class, destination)))
        writer.write(ul.p_data(1, _encode(identifier, syntax), header=0x02))
        try:
            final = await _responses(reader, max_pdu, response_timeout, syntax)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ul.ProtocolError,
                dimse.CommandError):
            writer.write(ul.abort_pdu())
            return None, None
        if final is not None:
            await _release(reader, writer, connect_timeout)
            return final
        return None, None
    except asyncio.CancelledError:
        writer.write(ul.abort_pdu())
        raise
    finally:
        writer.close()


async def _responses(reader: asyncio.StreamReader, max_pdu: int, timeout: float,
                     syntax: UID) -> tuple[Dataset, Dataset | None] | None:
    """Read responses until the final one; None if the peer aborts."""
    command, data = bytearray(), bytearray()
    current: dimse.Command | None = None
    while True:
        async with asyncio.timeout(timeout):  # at most this long between two responses
            kind, body = await ul.read_pdu(reader, max_pdu or 0xFFFFFFFF)
        if kind == ul.ABORT:
            return None
        if kind != ul.P_DATA:
            raise ul.ProtocolError(f"unexpected PDU type 0x{kind:02x}")
        for _context, header, fragment in ul.pdvs(body):
            if header & 0x01:
                command += fragment
                if len(command) > dimse.MAX_COMMAND_BYTES:
                    raise ul.ProtocolError("command set too long")
                if not header & 0x02:
                    continue
                current = dimse.decode(bytes(command), response=True)
                if current.has_data_set:
                    continue
            else:
                if current is None:
                    raise ul.ProtocolError("data set fragment without a command set")
                data += fragment
                if not header & 0x02:
                    continue
            assert current is not None
            if current.field != dimse.C_MOVE_RSP:
                raise ul.ProtocolError(f"unexpected DIMSE command 0x{current.field:04x}")
            if current.status not in dimse.PENDING:
                status = read_dataset(io.BytesIO(bytes(command)), True, True)
                ident = _decode(bytes(data), syntax) if data else None
                return status, ident
            command, data, current = bytearray(), bytearray(), None


async def _release(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   timeout: float) -> None:
    writer.write(ul.RELEASE_RQ_PDU)
    try:
        async with asyncio.timeout(timeout):
            while (await ul.read_pdu(reader, 1 << 20))[0] != ul.RELEASE_RP:
                pass
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ul.ProtocolError):
        pass  # the move is over either way


def _encode(ds: Dataset, syntax: UID) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, syntax.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


def _decode(data: bytes, syntax: UID) -> Dataset:
    return read_dataset(io.BytesIO(data), syntax.is_implicit_VR, True)
