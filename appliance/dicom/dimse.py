"""DIMSE command sets (PS3.7 §9, §E): what the storage SCP reads and answers, and the C-MOVE
request the PACS link sends.

A command set is a handful of group 0000 elements in implicit VR little endian; reading one with
pydicom costs more than the rest of the request handling, hence these few hand-written lines.
Unknown elements are skipped; a command set that is cut, or lacks what the box needs, is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
NO_DATA_SET = 0x0101
PENDING = (0xFF00, 0xFF01)

MAX_COMMAND_BYTES = 1 << 16  # a request command set is a few hundred bytes

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


class CommandError(ValueError):
    """A command set the box cannot act on."""


@dataclass
class Command:
    field: int
    message_id: int
    data_set_type: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    status: int | None = None  # responses only

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET


def decode(data: bytes, response: bool = False) -> Command:
    """A request's command set (or, with ``response``, a response's: MessageID is then the
    request's it answers, and Status is required)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise CommandError("command set cut inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise CommandError("command set element outside group 0000 or cut short")
        values[element] = data[offset:offset + length]
        offset += length

    def us(element: int, name: str) -> int:
        raw = values.get(element)
        if raw is None or len(raw) != 2:
            raise CommandError(f"command set without a valid {name}")
        return int(_US.unpack(raw)[0])

    def ui(element: int) -> str:
        return values.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")

    if response:
        return Command(field=us(0x0100, "CommandField"),
                       message_id=us(0x0120, "MessageIDBeingRespondedTo"),
                       data_set_type=us(0x0800, "CommandDataSetType"),
                       sop_class_uid=ui(0x0002), status=us(0x0900, "Status"))
    return Command(field=us(0x0100, "CommandField"), message_id=us(0x0110, "MessageID"),
                   data_set_type=us(0x0800, "CommandDataSetType"),
                   sop_class_uid=ui(0x0002), sop_instance_uid=ui(0x1000))


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def response(request: Command, status: int, comment: str = "") -> bytes:
    """The response command set to ``request`` (C-STORE-RSP or C-ECHO-RSP)."""
    body = _element(0x0002, _uid(request.sop_class_uid))
    body += _element(0x0100, _US.pack(request.field | 0x8000))
    body += _element(0x0120, _US.pack(request.message_id))
    body += _element(0x0800, _US.pack(NO_DATA_SET))
    body += _element(0x0900, _US.pack(status))
    if comment:
        text = comment[:64].encode("ascii", "replace")  # LO: at most 64 characters
        body += _element(0x0902, text + b" " if len(text) % 2 else text)
    if request.field == C_STORE_RQ:
        body += _element(0x1000, _uid(request.sop_instance_uid))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def move_request(message_id: int, sop_class_uid: str, destination: str) -> bytes:
    """A C-MOVE-RQ command set (medium priority, an identifier follows)."""
    ae = destination.encode("ascii")
    body = _element(0x0002, _uid(sop_class_uid))
    body += _element(0x0100, _US.pack(C_MOVE_RQ))
    body += _element(0x0110, _US.pack(message_id))
    body += _element(0x0600, ae + b" " if len(ae) % 2 else ae)
    body += _element(0x0700, _US.pack(0))
    body += _element(0x0800, _US.pack(0x0001))
    return _element(0x0000, struct.pack("<L", len(body))) + body
