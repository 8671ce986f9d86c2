"""The instance store: DICOM files on disk exactly as received, indexed in SQLite.

Layout: ``instances/<study>/<series>/<sop>.dcm`` (UIDs are checked to be digits and dots before
they become path components). A file is written to ``instances/.tmp``, fsync'd, then renamed into
place, so a crash leaves either the whole file or nothing; the index row is committed after the
rename, and files without a row are swept at open.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import gzip
import io
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pydicom
from pydicom.datadict import tag_for_keyword

from appliance.config import Config

from .db import Database
from .metadata import BASE, as_text, instance_elements

log = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class StoreFull(RuntimeError):
    """Accepting this instance would exceed the configured store size or free-space floor."""


class InvalidInstance(ValueError):
    """The data is not a usable DICOM Part 10 instance; the message says why."""


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    path: Path


def valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(_UID.fullmatch(uid))


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    v = ds.get(keyword, "")
    return "" if v is None else str(v)


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        v = ds.get(keyword)
        return None if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return None


_TEXT_FIELDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
                "ReferringPhysicianName", "Modality", "SeriesDescription", "BodyPartExamined")
_INT_FIELDS = ("SeriesNumber", "InstanceNumber", "Rows", "Columns", "NumberOfFrames")


_TAGS = {k: f"{tag_for_keyword(k):08X}" for k in _TEXT_FIELDS + _INT_FIELDS}


def _single(elements: dict[str, Any], keyword: str) -> tuple[bool, object]:
    """(True, value) when the element's JSON holds at most one plain value, which is then what
    pydicom gives for it; (False, None) when pydicom must say (several values, PN groups)."""
    elem = elements.get(_TAGS[keyword])
    if elem is None or not elem.get("Value"):
        return "InlineBinary" not in (elem or {}) and "BulkDataURI" not in (elem or {}), None
    values = elem["Value"]
    if len(values) != 1:
        return False, None
    v = values[0]
    if isinstance(v, dict):  # PN: only the alphabetic group reads the same as str()
        return (True, v["Alphabetic"]) if list(v) == ["Alphabetic"] else (False, None)
    return isinstance(v, (str, int)) and not isinstance(v, bool), v


def _index_fields(ds: pydicom.Dataset, elements: dict[str, Any]) -> dict[str, object]:
    """The indexed attributes, read from the instance's JSON where that is exact (no pydicom
    decoding again), else from pydicom."""
    out: dict[str, object] = {}
    for k in _TEXT_FIELDS:
        ok, v = _single(elements, k)
        out[k] = ("" if v is None else str(v)) if ok else _text(ds, k)
    for k in _INT_FIELDS:
        ok, v = _single(elements, k)
        out[k] = (v if isinstance(v, int) else None) if ok else _int(ds, k)
    return out


def _check_complete(ds: pydicom.Dataset, transfer_syntax: str) -> None:
    """Refuse a file cut short: pydicom reads a truncated file without complaint."""
    if "PixelData" not in ds:
        if ds.get("Rows") and ds.get("Columns") and "FloatPixelData" not in ds \
                and "DoubleFloatPixelData" not in ds:
            raise InvalidInstance("truncated: image attributes present but no pixel data")
        return
    elem = ds["PixelData"]
    if pydicom.uid.UID(transfer_syntax).is_encapsulated:
        if elem.is_undefined_length and not _ends_with_delimiter(elem.value):
            raise InvalidInstance("truncated: encapsulated pixel data has no sequence delimiter")
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise InvalidInstance("pixel data without valid Rows/Columns/BitsAllocated") from None
    expected = (rows * cols * frames * spp * bits + 7) // 8
    if len(elem.value) < expected:
        raise InvalidInstance(f"truncated: pixel data has {len(elem.value)} bytes, "
                              f"{expected} expected")


def _ends_with_delimiter(value: bytes) -> bool:
    # pydicom keeps the raw encapsulated value; a complete one was closed by (FFFE,E0DD), which
    # the reader consumes, so a complete value ends on a whole item. Re-parse the item headers.
    from pydicom.encaps import parse_basic_offsets, parse_fragments
    try:
        fp = io.BytesIO(value)
        parse_basic_offsets(fp)
        n, offsets = parse_fragments(fp)
        return n >= 1
    except (ValueError, EOFError, TypeError):
        return False


_fsync_pool: concurrent.futures.ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()


def _fsyncer() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that only fsync, shared by every store of the process (one per association
    that can be receiving at once is plenty; fsync waits on the disk, not the CPU)."""
    global _fsync_pool
    with _fsync_pool_lock:
        if _fsync_pool is None:
            _fsync_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="fsync")
        return _fsync_pool


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: fsync alone does the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range; do not wait for it


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the disk to start writing this range now (Linux ``sync_file_range``; no Python
    binding exists, hence ctypes). Only a head start for the fsync that follows, which alone
    makes the data durable."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DbProxy:
    """Forwards to ``store.db`` at call time."""

    def __init__(self, store: "Store") -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store.db, name)


class Incoming:
    """One instance being received: written to the temp area fragment by fragment.

    The disk starts writing each fragment back at once (``sync_file_range``), so the fsync at
    the end waits for little more than the last fragment; the fsync then runs in another thread
    while :meth:`finish` parses and validates the instance. An instance that is refused, cut
    short or abandoned never leaves the temp area: :meth:`discard` (or ``finish`` on failure)
    removes it. A write error or a full store is remembered and raised by ``finish``, so the
    sender's data can still be read to the end and answered properly.
    """

    def __init__(self, store: Store, tmp: Path, fd: int) -> None:
        self._store = store
        self.tmp = tmp
        self._fd: int | None = fd
        self.size = 0
        self._reserved = 0
        self._error: BaseException | None = None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._error is not None or self._fd is None:
            return
        try:
            self._store._reserve(len(chunk))
            self._reserved += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
            if self._store.fsync:
                _start_writeback(self._fd, self.size, len(chunk))
            self.size += len(chunk)
        except (StoreFull, OSError) as e:
            self._error = e

    def finish(self, data: bytes | bytearray | memoryview) -> StoredInstance:
        """Check, fsync, rename into place and index; ``data`` is what was written."""
        store = self._store
        try:
            if self._error is not None:
                raise self._error
            if len(data) != self.size:
                raise InvalidInstance("instance bytes differ from what was written")
            fd = self._fd
            assert fd is not None
            synced = _fsyncer().submit(os.fsync, fd) if store.fsync else None
            try:
                ds = store._parse(io.BytesIO(data))
            finally:
                if synced is not None:  # wait even on failure: never fsync a closed fd
                    synced.result()
            self._close()
            return store._commit(ds, self.tmp, self.size)
        except BaseException:
            self.discard()
            raise
        finally:
            self._release()

    def discard(self) -> None:
        """Drop the partial instance (idempotent)."""
        self._close()
        self.tmp.unlink(missing_ok=True)
        self._release()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._store._release(reserved)


class Store:
    """Thread-safe: pynetdicom handler threads ingest while the event loop reads."""

    def __init__(self, config: Config, synchronous: str = "NORMAL") -> None:
        self.config = config
        self.root = config.instances_dir
        self.tmp_dir = self.root / ".tmp"
        self.spare_dir = self.root / ".spare"  # empty temp files made ahead (prepare_incoming)
        self.metadata_dir = config.box.data_dir / "metadata"
        self.max_bytes = config.store.max_bytes
        self.min_free_bytes = config.store.min_free_bytes
        self.fsync = config.store.fsync
        self._synchronous = synchronous
        self._db: Database | None = None
        self._lock = threading.Lock()       # guards _used and _reserved
        self._used = 0
        self._reserved = 0
        self._listeners: list[Callable[[StoredInstance], None]] = []
        self._spare: collections.deque[tuple[Path, int]] = collections.deque()  # temp files

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        for d in (self.root, self.tmp_dir, self.spare_dir, self.metadata_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._db = Database(self.config.state_db, synchronous=self._synchronous)
        # Leftovers of a crash mid-write: temp files are never valid instances.
        for leftover in [*self.tmp_dir.iterdir(), *self.spare_dir.iterdir()]:
            leftover.unlink(missing_ok=True)
        row = self.db.query_one("SELECT COALESCE(SUM(size), 0) AS used FROM instances")
        self._used = int(row["used"]) if row else 0
        # Only an unclean stop (crash, power cut) can leave files without a row: walk the
        # whole tree then, not at every start.
        if self._clean_marker.exists():
            self._clean_marker.unlink()
        else:
            self.recover_orphans()

    def recover_orphans(self) -> int:
        """Index instance files that have no row.

        The index commits with ``synchronous=NORMAL`` (WAL): a power cut can undo the last
        commits, never corrupt the database. Each file was fsync'd and renamed into place before
        its commit, so an instance that was acknowledged is still on disk: index it again.
        """
        known = {r["rel_path"] for r in self.db.query("SELECT rel_path FROM instances")}
        recovered = 0
        for path in self.root.rglob("*.dcm"):
            rel = str(path.relative_to(self.root))
            if rel in known or path.parent == self.tmp_dir:
                continue
            try:
                with open(path, "rb") as f:
                    ds = self._parse(f)
                if str(Path(ds.StudyInstanceUID) / ds.SeriesInstanceUID /
                       f"{ds.SOPInstanceUID}.dcm") != rel:
                    raise InvalidInstance("file name does not match its UIDs")
                self._index(ds, path, path.stat().st_size)
                recovered += 1
            except (InvalidInstance, OSError) as e:
                log.warning("unusable file in the instance store moved aside",
                            extra={"error": str(e)[:200]})
                path.rename(path.with_suffix(".invalid"))
        if recovered:
            log.warning("re-indexed instance files after an interrupted commit",
                        extra={"count": recovered})
        return recovered

    def close(self) -> None:
        while self._spare:
            tmp, fd = self._spare.popleft()
            os.close(fd)
            tmp.unlink(missing_ok=True)
        if self._db is not None:
            self._db.close()
            self._db = None
            self._clean_marker.touch()

    @property
    def _clean_marker(self) -> Path:
        return self.config.box.data_dir / ".store-closed-cleanly"

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def db_lazy(self) -> Database:
        """The database for components wired before the store opens (it opens at start)."""
        return _DbProxy(self)  # type: ignore[return-value]

    @property
    def used_bytes(self) -> int:
        return self._used

    def add_listener(self, callback: Callable[[StoredInstance], None]) -> None:
        """``callback(StoredInstance)`` after each commit, in the ingesting thread."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[StoredInstance], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # -- ingest ------------------------------------------------------------------------------
    def ingest_bytes(self, data: bytes | bytearray | memoryview) -> StoredInstance:
        """Store one complete Part 10 file exactly as given."""
        incoming = self.incoming()
        incoming.write(data)
        return incoming.finish(data)

    def incoming(self) -> Incoming:
        """An instance to be written as it arrives, then checked and committed (see
        :class:`Incoming`)."""
        try:
            tmp, fd = self._spare.popleft()
        except IndexError:
            tmp, fd = self._new_temp()
        return Incoming(self, tmp, fd)

    def prepare_incoming(self, spares: int = 1) -> None:
        """Create empty temp files ahead of need: creating a file waits on the filesystem
        journal (~0.4 ms measured while other instances are being fsync'd), which then stays
        out of the next transfer. Call it between transfers, off the event loop."""
        while len(self._spare) < spares and self._db is not None:
            self._spare.append(self._new_temp(self.spare_dir))

    def _new_temp(self, directory: Path | None = None) -> tuple[Path, int]:
        tmp = (directory or self.tmp_dir) / uuid.uuid4().hex
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)

    def _parse(self, fp: io.BufferedIOBase | io.BytesIO) -> pydicom.Dataset:
        """Read and fully validate one instance; every problem is an :class:`InvalidInstance`."""
        try:
            return self._parse_checked(fp)
        except InvalidInstance:
            raise
        except Exception as e:  # input boundary: lazily decoded elements fail in many ways
            raise InvalidInstance(f"undecodable element: {type(e).__name__}: "
                                  f"{str(e)[:120]}") from None

    def _parse_checked(self, fp: io.BufferedIOBase | io.BytesIO) -> pydicom.Dataset:
        try:
            ds = pydicom.dcmread(fp, force=False)
        except Exception as e:  # input boundary: pydicom raises many types on damaged data
            raise InvalidInstance(f"not a DICOM Part 10 file: {type(e).__name__}: "
                                  f"{str(e)[:120]}") from None
        meta = getattr(ds, "file_meta", None)
        ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
        if not ts:
            raise InvalidInstance("file meta has no TransferSyntaxUID")
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            v = _text(ds, kw)
            if not v:
                raise InvalidInstance(f"missing {kw}")
            if not valid_uid(v):
                raise InvalidInstance(f"{kw} is not a valid UID")
        _check_complete(ds, ts)
        try:
            # pydicom decodes values lazily: decode everything the index and the metadata need
            # now, so a damaged element is refused before a byte is written.
            elements = instance_elements(ds, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                         ds.SOPInstanceUID)
            ds._drimbox_meta_json = as_text(elements)
            ds._drimbox_fields = _index_fields(ds, elements)
        except InvalidInstance:
            raise
        except Exception as e:
            raise InvalidInstance(f"undecodable element: {type(e).__name__}: "
                                  f"{str(e)[:120]}") from None
        msop = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
        if msop and msop != ds.SOPInstanceUID:
            raise InvalidInstance("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
        return ds

    def _reserve(self, size: int) -> None:
        with self._lock:
            if self._used + self._reserved + size > self.max_bytes:
                raise StoreFull(f"store limit of {self.max_bytes} bytes reached")
            free = shutil.disk_usage(self.root).free
            if free - size < self.min_free_bytes:
                raise StoreFull(f"less than {self.min_free_bytes} bytes would stay free on disk")
            self._reserved += size

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def _commit(self, ds: pydicom.Dataset, tmp: Path, size: int) -> StoredInstance:
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        final = self.root / study / series / f"{sop}.dcm"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(final.parent)
        return self._index(ds, final, size)

    def _index(self, ds: pydicom.Dataset, final: Path, size: int) -> StoredInstance:
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        meta_json = ds._drimbox_meta_json
        f = ds._drimbox_fields
        rel = final.relative_to(self.root)
        now = time.time()
        with self.db.transaction() as c:
            old = c.execute("SELECT size FROM instances WHERE sop_uid=?", (sop,)).fetchone()
            c.execute(
                """INSERT INTO studies(study_uid, patient_id, patient_name, patient_birth_date,
                       patient_sex, study_date, study_time, accession_number, study_id,
                       study_description, referring_physician, received_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(study_uid) DO UPDATE SET
                       patient_id=excluded.patient_id, patient_name=excluded.patient_name,
                       patient_birth_date=excluded.patient_birth_date,
                       patient_sex=excluded.patient_sex, study_date=excluded.study_date,
                       study_time=excluded.study_time,
                       accession_number=excluded.accession_number, study_id=excluded.study_id,
                       study_description=excluded.study_description,
                       referring_physician=excluded.referring_physician""",
                (study, f["PatientID"], f["PatientName"], f["PatientBirthDate"],
                 f["PatientSex"], f["StudyDate"], f["StudyTime"], f["AccessionNumber"],
                 f["StudyID"], f["StudyDescription"], f["ReferringPhysicianName"], now))
            c.execute(
                """INSERT INTO series(series_uid, study_uid, modality, series_number,
                       series_description, body_part, version)
                   VALUES (?,?,?,?,?,?,1)
                   ON CONFLICT(series_uid) DO UPDATE SET version = version + 1""",
                (series, study, f["Modality"], f["SeriesNumber"], f["SeriesDescription"],
                 f["BodyPartExamined"]))
            c.execute(
                """INSERT OR REPLACE INTO instances(sop_uid, series_uid, study_uid, sop_class_uid,
                       instance_number, transfer_syntax, rows, columns, frames, size, rel_path,
                       metadata_json, received_at, last_access)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (sop, series, study, ds.SOPClassUID, f["InstanceNumber"],
                 str(ds.file_meta.TransferSyntaxUID), f["Rows"], f["Columns"],
                 f["NumberOfFrames"] or 1, size, str(rel), meta_json, now, now))
        with self._lock:
            self._used += size - (int(old["size"]) if old else 0)
        stored = StoredInstance(study, series, sop, str(ds.SOPClassUID),
                                str(ds.file_meta.TransferSyntaxUID), size, final)
        for cb in list(self._listeners):
            try:
                cb(stored)
            except Exception:  # a listener must never break ingest
                log.exception("store listener failed")
        return stored

    # -- reads -------------------------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path | None:
        row = self.db.query_one(
            "SELECT rel_path FROM instances WHERE sop_uid=? AND series_uid=? AND study_uid=?",
            (sop_uid, series_uid, study_uid))
        return None if row is None else self.root / row["rel_path"]

    def series_metadata_gz(self, study_uid: str, series_uid: str) -> bytes | None:
        """The series' DICOM JSON array, gzip'd, with :data:`BASE` placeholders in URIs.

        Built from the per-instance JSON computed at ingest and cached on disk per series version,
        so a repeated request costs one file read.
        """
        row = self.db.query_one("SELECT version FROM series WHERE series_uid=? AND study_uid=?",
                                (series_uid, study_uid))
        if row is None:
            return None
        cache = self.metadata_dir / study_uid / f"{series_uid}.v{row['version']}.json.gz"
        try:
            return cache.read_bytes()
        except FileNotFoundError:
            pass
        rows = self.db.query(
            "SELECT metadata_json FROM instances WHERE series_uid=? "
            "ORDER BY instance_number, sop_uid", (series_uid,))
        body = ("[" + ",".join(r["metadata_json"] for r in rows) + "]").encode()
        data = gzip.compress(body, compresslevel=6, mtime=0)
        cache.parent.mkdir(parents=True, exist_ok=True)
        for old in cache.parent.glob(f"{series_uid}.v*.json.gz"):
            old.unlink(missing_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cache)
        return data

    # -- deletion (IOCM, eviction) -------------------------------------------------------------
    def delete_instances(self, sop_uids: Iterable[str]) -> int:
        """Remove instances (file and row); empty series and studies go too. Returns the count."""
        removed = 0
        for sop in sop_uids:
            with self.db.transaction() as c:
                row = c.execute("SELECT rel_path, size, series_uid, study_uid FROM instances "
                                "WHERE sop_uid=?", (sop,)).fetchone()
                if row is None:
                    continue
                c.execute("DELETE FROM instances WHERE sop_uid=?", (sop,))
                c.execute("UPDATE series SET version = version + 1 WHERE series_uid=?",
                          (row["series_uid"],))
                c.execute("DELETE FROM series WHERE series_uid=? AND NOT EXISTS "
                          "(SELECT 1 FROM instances WHERE series_uid=?)",
                          (row["series_uid"], row["series_uid"]))
                c.execute("DELETE FROM studies WHERE study_uid=? AND NOT EXISTS "
                          "(SELECT 1 FROM series WHERE study_uid=?)",
                          (row["study_uid"], row["study_uid"]))
            (self.root / row["rel_path"]).unlink(missing_ok=True)
            with self._lock:
                self._used -= int(row["size"])
            removed += 1
        return removed

    def delete_study(self, study_uid: str) -> int:
        rows = self.db.query("SELECT sop_uid FROM instances WHERE study_uid=?", (study_uid,))
        n = self.delete_instances(r["sop_uid"] for r in rows)
        shutil.rmtree(self.root / study_uid, ignore_errors=True) if valid_uid(study_uid) else None
        shutil.rmtree(self.metadata_dir / study_uid, ignore_errors=True) if valid_uid(study_uid) else None
        return n


__all__ = ["BASE", "InvalidInstance", "Store", "StoreFull", "StoredInstance", "valid_uid"]
