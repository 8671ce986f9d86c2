"""The DICOM upper layer (PS3.8) as the box's storage SCP and its C-MOVE requestor need it, on
asyncio streams.

Association PDUs (A-ASSOCIATE-RQ/AC/RJ) are rare and intricate: pynetdicom's PDU classes decode
and encode them, and its presentation-context negotiation picks the transfer syntaxes. What runs
for every instance — reading PDUs, walking the PDVs of P-DATA-TF, encoding a C-STORE or C-ECHO
response — is written here. pynetdicom's own acceptor hands each PDU between two threads that poll
every millisecond or so; on a 500 kB CT slice that polling, not the network, was most of the time
(measured: a pynetdicom SCP that stores nothing takes ~2.5 ms per slice, this loop ~1 ms).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = PYNETDICOM_IMPLEMENTATION_UID
IMPLEMENTATION_VERSION = PYNETDICOM_IMPLEMENTATION_VERSION

# PDU types (PS3.8 §9.3).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# A-ASSOCIATE-RJ (PS3.8 §9.3.4): result, source, reason.
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_PRESENTATION = 0x01, 0x03
REASON_NONE, REASON_CONTEXT_NAME, REASON_CALLING_AE, REASON_CALLED_AE = 0x01, 0x02, 0x03, 0x07
REASON_LOCAL_LIMIT = 0x02

# A-ABORT (PS3.8 §9.3.8): source 2 = service provider; reasons.
ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x01, 0x02, 0x06

MAX_ASSOCIATE_PDU = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts is well under 100 kB

_HEADER = struct.Struct(">BxL")
_PDV = struct.Struct(">LBB")


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


async def read_pdu(reader: asyncio.StreamReader, max_length: int) -> tuple[int, bytes]:
    """One PDU: (type, variable field). A length over ``max_length`` is a protocol error."""
    kind, length = _HEADER.unpack(await reader.readexactly(6))
    if kind not in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP,
                    ABORT):
        raise ProtocolError(f"unknown PDU type 0x{kind:02x}", ABORT_UNRECOGNIZED_PDU)
    if length > max_length:
        raise ProtocolError(f"PDU of {length} bytes exceeds the {max_length} agreed",
                            ABORT_INVALID_PARAMETER)
    return kind, await reader.readexactly(length)


def pdvs(body: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body: (context id, message control header, fragment)."""
    view, offset, end = memoryview(body), 0, len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF without any PDV", ABORT_INVALID_PARAMETER)
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("PDV item cut short", ABORT_INVALID_PARAMETER)
        length, context_id, header = _PDV.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError("PDV item length out of the PDU", ABORT_INVALID_PARAMETER)
        if header > 0x03:
            raise ProtocolError("PDV message control header with reserved bits set",
                                ABORT_INVALID_PARAMETER)
        yield context_id, header, view[offset + 6: offset + 4 + length]
        offset += 4 + length


def p_data(context_id: int, value: bytes, header: int = 0x03) -> bytes:
    """A P-DATA-TF PDU with one PDV: by default a whole command set (a response: always small);
    ``header=0x02`` for the last (here: only) fragment of a data set."""
    pdv = _PDV.pack(len(value) + 2, context_id, header) + value
    return _HEADER.pack(P_DATA, len(pdv)) + pdv


RELEASE_RQ_PDU = _HEADER.pack(RELEASE_RQ, 4) + b"\x00" * 4
RELEASE_RP_PDU = _HEADER.pack(RELEASE_RP, 4) + b"\x00" * 4


def abort_pdu(reason: int = 0) -> bytes:
    """A-ABORT from the service provider (source 2) with ``reason``."""
    return _HEADER.pack(ABORT, 4) + bytes((0, 0, 0x02, reason))


@dataclass
class Request:
    """What the requestor asked for, decoded from its A-ASSOCIATE-RQ."""

    primitive: A_ASSOCIATE
    calling_ae: str
    called_ae: str


def _decode_associate(pdu: A_ASSOCIATE_RQ | A_ASSOCIATE_AC, kind: int, name: str,
                      body: bytes) -> A_ASSOCIATE:
    """The primitive of an A-ASSOCIATE-RQ or -AC, decoded by pynetdicom."""
    try:
        pdu.decode(_HEADER.pack(kind, len(body)) + body)
        return pdu.to_primitive()
    except Exception as e:  # pynetdicom raises many types on damaged PDUs
        raise ProtocolError(f"undecodable {name}: {type(e).__name__}",
                            ABORT_INVALID_PARAMETER) from None


def decode_request(body: bytes) -> Request:
    primitive = _decode_associate(A_ASSOCIATE_RQ(), ASSOCIATE_RQ, "A-ASSOCIATE-RQ", body)
    return Request(primitive, (primitive.calling_ae_title or "").strip(),
                   (primitive.called_ae_title or "").strip())


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def accept(request: Request, supported: Sequence[PresentationContext],
           max_pdu: int) -> tuple[bytes, dict[int, tuple[str, str]]]:
    """The A-ASSOCIATE-AC PDU and the accepted contexts: {id: (abstract, transfer syntax)}.

    SCP/SCU role selection and extended negotiation are not answered: by PS3.7 the requestor
    then keeps the default roles, which is all a storage SCP needs.
    """
    rq = request.primitive
    results, _roles = negotiate_as_acceptor(rq.presentation_context_definition_list,
                                            list(supported))
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = rq.calling_ae_title
    primitive.called_ae_title = rq.called_ae_title
    primitive.result, primitive.result_source = 0x00, 0x01
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = _user_information(max_pdu)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    accepted = {int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in results if cx.result == 0 and cx.context_id is not None}
    return bytes(pdu.encode()), accepted


def _user_information(max_pdu: int) -> list[object]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_UID)
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = IMPLEMENTATION_VERSION
    return [length, impl_uid, impl_version]


def request_pdu(calling_ae: str, called_ae: str, abstract_syntax: str,
                transfer_syntaxes: Sequence[str], max_pdu: int) -> bytes:
    """An A-ASSOCIATE-RQ proposing one presentation context (id 1)."""
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = UID(abstract_syntax)
    context.transfer_syntax = [UID(ts) for ts in transfer_syntaxes]
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = [context]
    primitive.user_information = _user_information(max_pdu)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def decode_accept(body: bytes) -> dict[int, str]:
    """From an A-ASSOCIATE-AC: {accepted context id: transfer syntax}. (The peer's maximum PDU
    does not matter: the box sends it only command sets and a query identifier, all small.)"""
    primitive = _decode_associate(A_ASSOCIATE_AC(), ASSOCIATE_AC, "A-ASSOCIATE-AC", body)
    return {int(cx.context_id): str(cx.transfer_syntax[0])
            for cx in primitive.presentation_context_definition_results_list or []
            if cx.result == 0 and cx.context_id is not None and cx.transfer_syntax}
