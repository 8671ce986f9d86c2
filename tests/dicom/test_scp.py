"""The box's DICOM node against DCMTK peers: echo, store, allow-list, store full, bad P-DATA, stop."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, build_context

from appliance import config as C
from appliance.dicom.scp import DicomNode
from appliance.generate import synthetic_study
from appliance.store import Store, StoredInstance

from .conftest import (
    BOX_AET,
    MODALITY_AET,
    dataset_bytes,
    run_tool,
    store_rq_pdus,
    stored_files,
)

pytestmark = pytest.mark.integration


def storescu(port: int, files: list[Path], *, aet: str = MODALITY_AET, pdu: int = 131072,
             extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("storescu", "-aet", aet, "-aec", BOX_AET, "-pdu", str(pdu), *extra, "127.0.0.1",
            str(port), *map(str, files))


def index_count(store: Store) -> int:
    row = store.db.query_one("SELECT COUNT(*) AS n FROM instances")
    return int(row["n"]) if row else 0


async def test_echoscu_gets_an_answer(node: DicomNode) -> None:
    rc, out = await run_tool("echoscu", "-aet", MODALITY_AET, "-aec", BOX_AET, "127.0.0.1",
                             str(node.port))
    assert rc == 0, out


async def test_storescu_study_is_stored_exactly_as_sent(node: DicomNode, store: Store,
                                                        tmp_path: Path) -> None:
    files = synthetic_study("CT", 12, out_dir=tmp_path / "src", series=2)
    rc, out = await run_tool(*storescu(node.port, files))
    assert rc == 0, out
    assert index_count(store) == len(files)
    for f in files:
        sent = pydicom.dcmread(f, stop_before_pixels=True)
        path = store.instance_path(sent.StudyInstanceUID, sent.SeriesInstanceUID,
                                   sent.SOPInstanceUID)
        assert path is not None and path.is_file()
        # Bytes identical to what was sent; only the file meta is rebuilt by the receiver.
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(f.read_bytes())
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert not list(store.tmp_dir.iterdir())


def _recode(files: list[Path], syntax: str) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax  # pydicom deflates the data set on write
        elif syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(f, enforce_file_format=True)


@pytest.mark.parametrize("syntax,flag", [(RLELossless, "-xr"), (JPEGLSLossless, "-xt"),
                                         (JPEG2000Lossless, "-xv"),
                                         (DeflatedExplicitVRLittleEndian, "-xd"),
                                         (ImplicitVRLittleEndian, "-xi")])
async def test_compressed_syntaxes_are_kept_as_sent(node: DicomNode, store: Store,
                                                   tmp_path: Path, syntax: str,
                                                   flag: str) -> None:
    files = synthetic_study("MR", 2, out_dir=tmp_path / "src")
    try:
        _recode(files, syntax)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no pydicom encoder for {syntax.name} here: {e}")
    # Propose the file's own syntax, so storescu sends it as is.
    rc, out = await run_tool(*storescu(node.port, files, extra=(flag,)))
    assert rc == 0, out
    for f in files:
        sent = pydicom.dcmread(f, stop_before_pixels=True)
        path = store.instance_path(sent.StudyInstanceUID, sent.SeriesInstanceUID,
                                   sent.SOPInstanceUID)
        assert path is not None
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(f.read_bytes())


async def test_sockets_have_nodelay_and_the_configured_max_pdu(
        make_config: Callable[..., C.Config], store: Store) -> None:
    cfg = make_config(dicom={"max_pdu": 65536})
    node = DicomNode(cfg, store)
    await node.start()
    try:
        assoc, sock = await asyncio.to_thread(_associate, node.port)
        assert assoc.acceptor.maximum_length == 65536  # type: ignore[attr-defined]
        (raw,) = node.active_sockets()
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        await asyncio.to_thread(assoc.release)  # type: ignore[attr-defined]
    finally:
        await node.stop()


async def test_concurrent_associations_all_stored(node: DicomNode, store: Store,
                                                  tmp_path: Path) -> None:
    studies = [synthetic_study("MR", 6, out_dir=tmp_path / f"s{i}") for i in range(3)]
    results = await asyncio.gather(*(run_tool(*storescu(node.port, f)) for f in studies))
    assert all(rc == 0 for rc, _ in results), results
    assert index_count(store) == 18


async def test_unknown_calling_ae_is_refused_and_logged(node: DicomNode, store: Store,
                                                        tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    files = synthetic_study("MR", 1, out_dir=tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="appliance.dicom"):
        rc, out = await run_tool(*storescu(node.port, files, aet="INTRUDER"))
        await asyncio.sleep(0.2)
    assert rc != 0
    assert "Calling AE Title Not Recognized" in out
    refused = [r for r in caplog.records if r.getMessage() == "association refused"]
    assert refused and refused[0].calling_ae == "INTRUDER"  # type: ignore[attr-defined]
    assert refused[0].reason == "calling AE title not allowed"  # type: ignore[attr-defined]
    assert index_count(store) == 0 and stored_files(store) == []
    # The PACS's AE is allowed by default (it is the C-MOVE source).
    rc, out = await run_tool("echoscu", "-aet", "PACS", "-aec", BOX_AET, "127.0.0.1",
                             str(node.port))
    assert rc == 0, out


async def test_association_limit_refuses_the_extra_peer(
        make_config: Callable[..., C.Config], store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    node = DicomNode(make_config(dicom={"max_associations": 1}), store)
    await node.start()
    try:
        first, _ = await asyncio.to_thread(_associate, node.port)
        with caplog.at_level(logging.WARNING, logger="appliance.dicom"):
            rc, out = await run_tool("echoscu", "-aet", MODALITY_AET, "-aec", BOX_AET,
                                     "127.0.0.1", str(node.port))
            await asyncio.sleep(0.2)
        assert rc != 0 and "Association Rejected" in out
        assert any(getattr(r, "reason", "") == "too many associations" for r in caplog.records)
        await asyncio.to_thread(first.release)  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)
        await _still_serving(node)
    finally:
        await node.stop()


async def test_wrong_called_ae_is_refused(node: DicomNode) -> None:
    rc, out = await run_tool("echoscu", "-aet", MODALITY_AET, "-aec", "SOMEONE", "127.0.0.1",
                             str(node.port))
    assert rc != 0 and "Called AE Title Not Recognized" in out


async def test_store_full_answers_out_of_resources_and_keeps_nothing_partial(
        make_config: Callable[..., C.Config], tmp_path: Path) -> None:
    files = synthetic_study("CT", 5, out_dir=tmp_path / "src")
    size = files[0].stat().st_size
    cfg = make_config(store={"max_bytes": int(size * 2.5), "min_free_bytes": 0})
    st = Store(cfg, synchronous="NORMAL")
    st.open()
    node = DicomNode(cfg, st)
    await node.start()
    try:
        rc, out = await run_tool(*storescu(node.port, files, extra=("-d",)))
    finally:
        await node.stop()
    # storescu goes on after a refused instance; each refusal is reported with the status.
    assert "DIMSE Status                  : 0xa700: Refused: Out of resources" in out, out
    assert "ErrorComment" in out and "store limit" in out
    assert index_count(st) == 2
    on_disk = stored_files(st)
    assert len(on_disk) == 2 and not list(st.tmp_dir.iterdir())
    sent = {dataset_bytes(f.read_bytes()) for f in files}
    assert all(dataset_bytes(p.read_bytes()) in sent for p in on_disk)
    st.close()


# -- bad P-DATA ---------------------------------------------------------------------------

def _associate(port: int) -> tuple[object, socket.socket]:
    """A real association (pynetdicom requestor); the test then writes raw bytes on its socket."""
    ae = AE(ae_title=MODALITY_AET)
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.4",
                                           [ExplicitVRLittleEndian])]
    assoc = ae.associate("127.0.0.1", port, ae_title=BOX_AET)
    assert assoc.is_established
    return assoc, assoc.dul.socket.socket


def _gone(assoc: object, timeout: float = 10) -> bool:
    """True once the association is over (the box aborted it or closed the connection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and assoc.is_alive():  # type: ignore[attr-defined]
        time.sleep(0.02)
    return not assoc.is_alive()  # type: ignore[attr-defined]


def _pdata(context_id: int, header: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _store_pdus(path: Path) -> list[bytes]:
    """The P-DATA-TF PDUs a requestor sends for one C-STORE of ``path`` on context 1."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return store_rq_pdus(ds.SOPClassUID, ds.SOPInstanceUID, dataset_bytes(path.read_bytes()))


async def _still_serving(node: DicomNode) -> None:
    rc, out = await run_tool("echoscu", "-aet", MODALITY_AET, "-aec", BOX_AET, "127.0.0.1",
                             str(node.port))
    assert rc == 0, out
    assert node.health().ready


async def test_truncated_store_is_aborted_and_nothing_stored(node: DicomNode, store: Store,
                                                             tmp_path: Path) -> None:
    (f,) = synthetic_study("MR", 1, out_dir=tmp_path / "src")
    pdus = _store_pdus(f)
    assert len(pdus) > 4
    assoc, sock = await asyncio.to_thread(_associate, node.port)
    sock.sendall(b"".join(pdus[:-3]))      # command and most of the data set, not the end
    sock.sendall(pdus[-3][:100])           # then half a PDU, and the peer vanishes
    sock.shutdown(socket.SHUT_RDWR)
    assert await asyncio.to_thread(_gone, assoc)
    await asyncio.sleep(0.3)
    assert index_count(store) == 0 and stored_files(store) == []
    await _still_serving(node)


# pynetdicom 3.0's DUL thread dies on some garbage (e.g. a command set without CommandField);
# the association then ends, which is what these tests check. Keep that traceback out of the report.
_dul_thread_dies = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning")


@_dul_thread_dies
@pytest.mark.parametrize("garbage", [
    b"\x99\x00\x00\x00\x00\x10" + b"\xff" * 16,       # unknown PDU type
    _pdata(1, 0x03, b""),                              # empty command set
    _pdata(1, 0x03, b"\x00" * 7),                      # command set cut inside an element
    _pdata(1, 0x03, b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x00"),  # no CommandField
    _pdata(7, 0x03, b"\xff" * 40),                     # unknown presentation context
], ids=["pdu-type", "empty-command", "cut-element", "no-command-field", "bad-context"])
async def test_garbage_is_aborted_by_the_box(node: DicomNode, store: Store,
                                             garbage: bytes) -> None:
    assoc, sock = await asyncio.to_thread(_associate, node.port)
    sock.sendall(garbage)
    # The box ends the association itself, without waiting for its network timeout.
    assert await asyncio.to_thread(_gone, assoc, 3.0), "the box kept a garbage association"
    assert index_count(store) == 0 and stored_files(store) == []
    await _still_serving(node)


@_dul_thread_dies
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(min_size=0, max_size=3000), header=st.integers(0, 3),
       context_id=st.sampled_from([1, 3, 255]))
async def test_fuzzed_pdata_never_stores_and_box_keeps_serving(
        node: DicomNode, store: Store, payload: bytes, header: int, context_id: int) -> None:
    assoc, sock = await asyncio.to_thread(_associate, node.port)
    try:
        sock.sendall(_pdata(context_id, header, payload))
    except OSError:
        pass  # the box already dropped us: a fine answer to garbage
    # A fragment that is not the last may be legitimately waited for: then we give up.
    if not await asyncio.to_thread(_gone, assoc, 1.0):
        await asyncio.to_thread(assoc.abort)  # type: ignore[attr-defined]
    assert await asyncio.to_thread(_gone, assoc)
    assert index_count(store) == 0 and not list(store.tmp_dir.iterdir())
    await _still_serving(node)


# -- stop() during a transfer -------------------------------------------------------------

async def test_stop_during_transfer_aborts_cleanly(node: DicomNode, store: Store,
                                                   tmp_path: Path) -> None:
    files = synthetic_study("CT", 80, out_dir=tmp_path / "src")
    first = threading.Event()

    def on_stored(inst: StoredInstance) -> None:
        first.set()

    store.add_listener(on_stored)
    port = node.port
    proc = asyncio.ensure_future(run_tool(*storescu(port, files, pdu=16384)))
    assert await asyncio.to_thread(first.wait, 30)
    t0 = time.monotonic()
    await node.stop()
    assert time.monotonic() - t0 < 10
    rc, out = await proc
    assert rc != 0 or index_count(store) == len(files), out  # the sender saw the abort
    n = index_count(store)
    assert 1 <= n < len(files)
    on_disk = [p for p in stored_files(store)]
    assert len(on_disk) == n and not list(store.tmp_dir.iterdir())
    sent = {dataset_bytes(f.read_bytes()) for f in files}
    assert all(dataset_bytes(p.read_bytes()) in sent for p in on_disk)  # whole files only
    assert not node.health().ready
    rc, _ = await run_tool("echoscu", "-aet", MODALITY_AET, "-aec", BOX_AET, "127.0.0.1",
                           str(port), timeout=10)
    assert rc != 0  # nobody listens any more


# -- disk really full -----------------------------------------------------------------------

async def test_disk_full_answers_out_of_resources_and_leaves_no_partial_file(
        make_config: Callable[..., C.Config], tmp_path: Path) -> None:
    """The instances directory on a 3 MB tmpfs: the disk fills up before the store limit."""
    import subprocess

    cfg = make_config(store={"max_bytes": 10 * 2**30, "min_free_bytes": 0})
    mnt = cfg.instances_dir
    mnt.mkdir(parents=True)
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                        capture_output=True).returncode
    if rc != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        files = synthetic_study("CT", 10, out_dir=tmp_path / "src")
        st = Store(cfg, synchronous="NORMAL")
        st.open()
        node = DicomNode(cfg, st)
        await node.start()
        try:
            rc, out = await run_tool(*storescu(node.port, files, extra=("-d",)))
        finally:
            await node.stop()
        # The store sees the free space run out (or the write fails with ENOSPC): A700 either way.
        assert "0xa700: Refused: Out of resources" in out and "ErrorComment" in out, out
        n = index_count(st)
        assert 1 <= n < len(files)
        on_disk = stored_files(st)
        assert len(on_disk) == n and not list(st.tmp_dir.iterdir())
        sent = {dataset_bytes(f.read_bytes()) for f in files}
        assert all(dataset_bytes(p.read_bytes()) in sent for p in on_disk)
        st.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("first", [
    b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16,        # A-ASSOCIATE-RQ that does not decode
    b"\x04\x00\x00\x00\x00\x08" + b"\x00" * 8,         # P-DATA before any association
    b"\x01\x00\xff\xff\xff\xff",                       # a 4 GB association request
], ids=["garbage-rq", "pdata-first", "huge-rq"])
async def test_bad_association_request_is_aborted(node: DicomNode, first: bytes) -> None:
    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(first)
            return s.recv(64)

    answer = await asyncio.to_thread(exchange)
    assert answer[:1] == b"\x07"  # A-ABORT, at once, not after a timeout
    assert node.health().details["aborted"] >= 1
    await _still_serving(node)
