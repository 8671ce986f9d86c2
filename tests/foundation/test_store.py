"""The store: files exactly as received, atomic writes, size limit, migrations."""

from __future__ import annotations

import dataclasses
import gzip
import json
import sqlite3
from pathlib import Path

import pydicom
import pytest

from appliance import config, generate
from appliance.store import Database, InvalidInstance, SchemaError, Store, StoreFull
from appliance.store.db import migrations


def _cfg(tmp_path: Path, **store_kw) -> config.Config:
    cfg = config.parse(config.example(str(tmp_path / "data")))
    if store_kw:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, **store_kw))
    return cfg


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return generate.synthetic_study("CT", 4, out_dir=tmp_path / "in", series=2)


def test_ingest_keeps_bytes_and_indexes(tmp_path: Path, study: list[Path]) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    for p in study:
        si = s.ingest_bytes(p.read_bytes())
        assert si.path.read_bytes() == p.read_bytes()
    ds = pydicom.dcmread(study[0])
    assert s.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) \
        .read_bytes() == study[0].read_bytes()
    n = s.db.query_one("SELECT COUNT(*) AS n FROM instances")["n"]
    assert n == 8
    assert s.used_bytes == sum(p.stat().st_size for p in study)
    meta = json.loads(gzip.decompress(s.series_metadata_gz(ds.StudyInstanceUID,
                                                            ds.SeriesInstanceUID)))
    assert len(meta) == 4
    assert meta[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert "BulkDataURI" in meta[0]["7FE00010"] and "InlineBinary" not in meta[0]["7FE00010"]
    assert [m["00200013"]["Value"][0] for m in meta] == [1, 2, 3, 4]
    s.close()


def test_metadata_cache_follows_new_instances(tmp_path: Path, study: list[Path]) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    s.ingest_bytes(study[0].read_bytes())
    ds = pydicom.dcmread(study[0])
    first = json.loads(gzip.decompress(s.series_metadata_gz(ds.StudyInstanceUID,
                                                             ds.SeriesInstanceUID)))
    s.ingest_bytes(study[1].read_bytes())
    second = json.loads(gzip.decompress(s.series_metadata_gz(ds.StudyInstanceUID,
                                                              ds.SeriesInstanceUID)))
    assert (len(first), len(second)) == (1, 2)


def test_store_full_writes_nothing(tmp_path: Path, study: list[Path]) -> None:
    limit = study[0].stat().st_size * 2 + 10
    s = Store(_cfg(tmp_path, max_bytes=limit, min_free_bytes=0))
    s.open()
    s.ingest_bytes(study[0].read_bytes())
    s.ingest_bytes(study[1].read_bytes())
    with pytest.raises(StoreFull):
        s.ingest_bytes(study[2].read_bytes())
    files = [p for p in s.root.rglob("*") if p.is_file()]
    assert len(files) == 2 and not list(s.tmp_dir.iterdir())
    assert s.db.query_one("SELECT COUNT(*) AS n FROM instances")["n"] == 2


@pytest.mark.parametrize("mangle,reason", [
    (lambda b: b[:300], "missing SOPClassUID"),
    (lambda b: b[:-1000], "truncated: pixel data has"),
    (lambda b: b"garbage" * 100, "not a DICOM"),
])
def test_invalid_data_is_refused_without_trace(tmp_path: Path, study, mangle, reason) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    with pytest.raises(InvalidInstance, match=reason):
        s.ingest_bytes(mangle(study[0].read_bytes()))
    assert not [p for p in s.root.rglob("*") if p.is_file()]


def test_truncated_compressed_instance_refused(tmp_path: Path) -> None:
    jls = generate.synthetic_study("MR", 1, out_dir=tmp_path / "jls",
                                   transfer_syntax="1.2.840.10008.1.2.4.80")[0].read_bytes()
    s = Store(_cfg(tmp_path))
    s.open()
    s.ingest_bytes(jls)
    for cut in (100, 3000):
        with pytest.raises(InvalidInstance):
            s.ingest_bytes(jls[:-cut])
    assert s.db.query_one("SELECT COUNT(*) AS n FROM instances")["n"] == 1


def test_missing_uid_and_path_traversal_uid_refused(tmp_path: Path, study) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    ds = pydicom.dcmread(study[0])
    ds.SeriesInstanceUID = "../../etc"
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(InvalidInstance, match="SeriesInstanceUID is not a valid UID"):
        s.ingest_bytes(bad.read_bytes())
    del ds.StudyInstanceUID
    ds.save_as(bad)
    with pytest.raises(InvalidInstance, match="missing StudyInstanceUID"):
        s.ingest_bytes(bad.read_bytes())


def test_replacing_an_instance_keeps_accounting(tmp_path: Path, study) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    s.ingest_bytes(study[0].read_bytes())
    s.ingest_bytes(study[0].read_bytes())
    assert s.used_bytes == study[0].stat().st_size
    s.close()
    s.open()  # recomputed from the index at open
    assert s.used_bytes == study[0].stat().st_size


def test_delete_instances_purges_files_rows_and_empty_parents(tmp_path: Path, study) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    stored = [s.ingest_bytes(p.read_bytes()) for p in study]
    assert s.delete_instances([x.sop_uid for x in stored[:4]]) == 4
    assert not stored[0].path.exists()
    assert s.db.query_one("SELECT COUNT(*) AS n FROM series")["n"] == 1
    assert s.delete_study(stored[0].study_uid) == 4
    assert s.db.query_one("SELECT COUNT(*) AS n FROM studies")["n"] == 0
    assert s.used_bytes == 0


def test_crash_leftovers_are_swept_at_open(tmp_path: Path) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    (s.tmp_dir / "half-written").write_bytes(b"\0" * 100)
    s.close()
    s.open()
    assert not list(s.tmp_dir.iterdir())


def test_migrations_from_empty_and_from_each_version(tmp_path: Path) -> None:
    known = migrations()
    assert [n for n, _, _ in known] == list(range(1, len(known) + 1))
    for start in range(0, len(known) + 1):
        path = tmp_path / f"v{start}.db"
        db = Database(path) if start == len(known) else _db_at(path, start)
        assert db.version == start
        db.close()
        db = Database(path)  # opening migrates to the latest
        assert db.version == len(known)
        tables = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"studies", "series", "instances", "audit_events"} <= tables
        db.close()


def test_data_survives_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = _db_at(path, 1)
    db.execute("INSERT INTO studies(study_uid, received_at) VALUES ('1.2.3', 0)")
    db.close()
    db = Database(path)
    assert db.query_one("SELECT study_uid FROM studies")["study_uid"] == "1.2.3"


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    c = sqlite3.connect(path)
    c.execute("PRAGMA user_version=999")
    c.close()
    with pytest.raises(SchemaError, match="newer than this software"):
        Database(path)


def test_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"


def _db_at(path: Path, version: int) -> Database:
    """A database migrated only up to ``version`` (as an older release left it)."""
    db = Database.__new__(Database)
    import threading
    db.path = path
    db._lock = threading.RLock()
    db._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db._conn.row_factory = sqlite3.Row
    db._conn.execute("PRAGMA journal_mode=WAL")
    db.migrate(target=version)
    return db


def test_acknowledged_file_without_row_is_reindexed_at_open(tmp_path: Path, study) -> None:
    """A power cut can undo the last NORMAL-mode commits; the fsync'd files bring them back."""
    s = Store(_cfg(tmp_path))
    s.open()
    stored = [s.ingest_bytes(p.read_bytes()) for p in study[:3]]
    s.db.execute("DELETE FROM instances WHERE sop_uid=?", (stored[1].sop_uid,))  # lost commit
    (s.root / stored[0].study_uid / stored[0].series_uid / "9.9.9.dcm").write_bytes(b"junk")
    s = Store(_cfg(tmp_path))  # the process died: no close(), so the next start checks
    s.open()
    row = s.db.query_one("SELECT size FROM instances WHERE sop_uid=?", (stored[1].sop_uid,))
    assert row is not None and row["size"] == stored[1].size
    assert s.used_bytes == sum(x.size for x in stored)
    assert (s.root / stored[0].study_uid / stored[0].series_uid / "9.9.9.invalid").exists()


def test_spare_temp_files_are_used_and_never_left_behind(tmp_path: Path,
                                                         study: list[Path]) -> None:
    s = Store(_cfg(tmp_path))
    s.open()
    s.prepare_incoming()
    (spare,) = list(s.spare_dir.iterdir())
    assert spare.stat().st_size == 0
    incoming = s.incoming()  # takes the spare: no file to create during the transfer
    assert incoming.tmp == spare
    data = study[0].read_bytes()
    incoming.write(data)
    inst = incoming.finish(data)
    assert inst.path.read_bytes() == data and not spare.exists()
    s.prepare_incoming()
    s.close()  # an unused spare goes with the store
    assert not list(s.spare_dir.iterdir())
    s.prepare_incoming()  # closed: nothing is made
    assert not list(s.spare_dir.iterdir())
    (s.spare_dir / "left-by-a-crash").write_bytes(b"")
    s.open()  # and a crash's leftovers are removed at the next start
    assert not list(s.spare_dir.iterdir())
    s.close()
