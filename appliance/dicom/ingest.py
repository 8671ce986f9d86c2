"""Received instances into the store, and the store's verdict into a DIMSE status (PS3.4 B.2.3).

Shared by the box's storage SCP and by the PACS link's C-GET, whose C-STOREs arrive on the box's
own association.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts

from appliance.store import InvalidInstance, StoredInstance, StoreFull

from .ul import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION

log = logging.getLogger("appliance.dicom")

#: Transfer syntaxes the box accepts for storage, most common first (the requestor's order wins).
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,       # .4.50
    JPEGExtended12Bit,      # .4.51
    JPEGLossless,           # .4.57
    JPEGLosslessSV1,        # .4.70
    JPEGLSLossless,         # .4.80
    JPEGLSNearLossless,     # .4.81
    JPEG2000Lossless,       # .4.90
    JPEG2000,               # .4.91
    HTJ2KLossless,          # .4.201
    HTJ2KLosslessRPCL,      # .4.202
    HTJ2K,                  # .4.203
    RLELossless,            # .5
    ExplicitVRBigEndian,    # retired, still sent by old modalities
)

#: Every storage SOP class pynetdicom knows (the 128-context limit binds requestors, not us).
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax
)

# DIMSE statuses (PS3.4 Annex B, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def ingest_result(store_it: Callable[[], StoredInstance]) -> tuple[int, str]:
    """Run one store call (``Store.ingest_bytes`` or ``Incoming.finish``); return the DIMSE
    status and error comment for the peer."""
    try:
        inst = store_it()
    except StoreFull as e:
        log.warning("C-STORE refused: store full", extra={"reason": str(e)})
        return OUT_OF_RESOURCES, f"Out of resources: {e}"
    except InvalidInstance as e:
        log.warning("C-STORE refused: invalid instance", extra={"reason": str(e)})
        return CANNOT_UNDERSTAND, f"Invalid instance: {e}"
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("C-STORE refused: disk full")
            return OUT_OF_RESOURCES, "Out of resources: disk full"
        log.exception("C-STORE failed: I/O error")
        return PROCESSING_FAILURE, "Processing failure: I/O error"
    except Exception:  # a bug must not kill the association silently
        log.exception("C-STORE failed")
        return PROCESSING_FAILURE, "Processing failure"
    log.debug("C-STORE stored", extra={"size": inst.size, "transfer_syntax": inst.transfer_syntax})
    return SUCCESS, ""


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble and file meta group (PS3.10 §7.1) to put before a data set received by DIMSE,
    which carries no file meta: the receiver writes its own. Hand-written because pydicom's
    writer took longer than everything else done per instance outside the store."""
    meta = (_explicit(0x0001, b"OB", b"\x00\x01") + _explicit(0x0002, b"UI", _ui(sop_class_uid))
            + _explicit(0x0003, b"UI", _ui(sop_instance_uid))
            + _explicit(0x0010, b"UI", _ui(transfer_syntax))
            + _explicit(0x0012, b"UI", _ui(IMPLEMENTATION_UID))
            + _explicit(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION.encode("ascii"), b" ")))
    group_length = _explicit(0x0000, b"UL", struct.pack("<L", len(meta)))
    return b"".join((b"\x00" * 128, b"DICM", group_length, meta))


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _ui(uid: str) -> bytes:
    return _pad(uid.encode("ascii"), b"\x00")


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element in explicit VR little endian (OB has the long length form)."""
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, element) + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value
