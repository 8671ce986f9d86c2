"""The DICOMweb guard on the box's real HTTP stack: default deny, viewer sessions, site tools on
``dicomweb.open_to``, the audit row of every decision, and the audit trail's export.

Peer boxes (mTLS + whitelist + PSC token + KOS) are tested with real processes in
test_peer_access.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pydicom
import pytest
from aiohttp.test_utils import TestClient, TestServer

from appliance import config
from appliance.audit import AuditWriter, export_csv
from appliance.dicomweb import make_app as dicomweb_app
from appliance.dicomweb.server import AUDIT_KEY
from appliance.generate import synthetic_study
from appliance.store import Store
from appliance.trust.guard import Guard
from appliance.trust.sessions import COOKIE, SessionStore
from appliance.web.server import make_app as root_app


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("studies")
    return {"a": synthetic_study("CT", 2, out_dir=root / "a", patient_id="PAT-GUARD-A",
                                 patient_name="DURAND^ALICE"),
            "b": synthetic_study("MR", 2, out_dir=root / "b", patient_id="PAT-GUARD-B",
                                 patient_name="PETIT^BRUNO")}


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture
def store(tmp_path: Path, two_studies: dict[str, list[Path]]) -> Any:
    s = Store(config.parse(config.example(str(tmp_path / "data"))), synchronous="NORMAL")
    s.open()
    for files in two_studies.values():
        for f in files:
            s.ingest_bytes(f.read_bytes())
    yield s
    s.close()


async def serve(store: Store, guard: Guard, *, behind_gateway: bool = False) -> TestClient:
    dicomweb = dicomweb_app(store, guard=guard, audit_flush_interval=0)
    app = root_app(lambda: (True, {}), {"/dicom-web": dicomweb}, behind_gateway=behind_gateway)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    client.audit = dicomweb[AUDIT_KEY]  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[TestClient]]:
    made: list[TestClient] = []
    yield made
    for c in made:
        await c.close()


def audit_rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.db.query("SELECT * FROM audit_events ORDER BY id")]


async def flushed(client: TestClient) -> None:
    writer: AuditWriter = client.audit  # type: ignore[attr-defined]
    await writer.flush()


def instance_path(files: list[Path]) -> str:
    st, se, sop = uids(files[0])
    return f"/dicom-web/studies/{st}/series/{se}/instances/{sop}"


async def test_default_deny_without_any_ground(store: Store, two_studies: Any,
                                               clients: list) -> None:
    c = await serve(store, Guard(sessions=SessionStore(store.db)))
    clients.append(c)
    for path in ("/dicom-web/studies", instance_path(two_studies["a"]),
                 f"/dicom-web/studies/{uids(two_studies['a'][0])[0]}/series"):
        r = await c.get(path)
        assert r.status == 401
        assert r.content_type == "application/json"
        body = await r.json()
        assert set(body) == {"status", "reason"} and "authentication required" in body["reason"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        text = await r.text()
        assert "PAT-GUARD" not in text and "DURAND" not in text
    await flushed(c)
    rows = audit_rows(store)
    assert len(rows) == 3 and {r["outcome"] for r in rows} == {"refused"}
    assert {r["status"] for r in rows} == {401}
    assert all(r["actor"] == "http:127.0.0.1" for r in rows)
    # The refused request named a study of patient A: the audit trail says whose data it was.
    assert rows[1]["patient_id"] == "PAT-GUARD-A"
    assert rows[1]["study_uid"] == uids(two_studies["a"][0])[0]


async def test_a_certificate_header_from_outside_the_gateway_counts_for_nothing(
        store: Store, pki: Any, clients: list) -> None:
    """Without the TLS gateway, nobody may claim a client certificate: the header is dropped
    before the guard sees it, so the request is anonymous (401), not a peer."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(pki.structures[1].auth_cert.read_bytes())
    c = await serve(store, Guard())
    clients.append(c)
    r = await c.get("/dicom-web/studies", headers={
        "X-Drimbox-Client-Cert": base64.b64encode(cert.public_bytes(Encoding.DER)).decode()})
    assert r.status == 401


async def test_open_to_lets_only_the_named_addresses_read(store: Store, clients: list) -> None:
    c = await serve(store, Guard(open_to=["10.9.8.0/24"]))
    clients.append(c)
    assert (await c.get("/dicom-web/studies")).status == 401
    c = await serve(store, Guard(open_to=["10.9.8.0/24", "127.0.0.1"]))
    clients.append(c)
    r = await c.get("/dicom-web/studies")
    assert r.status == 200 and len(await r.json(content_type=None)) == 2
    await flushed(c)
    served = [r for r in audit_rows(store) if r["outcome"] == "ok"]
    assert {r["actor"] for r in served} == {"site:127.0.0.1"}
    assert all(r["detail"].startswith("site: ") for r in served)


async def test_behind_the_gateway_open_to_applies_to_the_client_address(store: Store,
                                                                        clients: list) -> None:
    """The gateway forwards the client's address; the guard decides on it, not on the
    gateway's own loopback connection."""
    c = await serve(store, Guard(open_to=["127.0.0.1"]), behind_gateway=True)
    clients.append(c)
    assert (await c.get("/dicom-web/studies",
                        headers={"X-Forwarded-For": "192.0.2.7"})).status == 401
    assert (await c.get("/dicom-web/studies",
                        headers={"X-Forwarded-For": "127.0.0.1"})).status == 200


async def test_a_session_reads_only_its_granted_exams(store: Store, two_studies: Any,
                                                      clients: list) -> None:
    sessions = SessionStore(store.db)
    study_a = uids(two_studies["a"][0])[0]
    sid = sessions.create("810001234567", structure="499700367909007", ttl=60,
                          studies=frozenset({study_a}))
    c = await serve(store, Guard(sessions=sessions))
    clients.append(c)
    cookie = {"Cookie": f"{COOKIE}={sid}"}
    r = await c.get("/dicom-web/studies", headers=cookie)
    found = await r.json(content_type=None)
    assert r.status == 200 and [x["0020000D"]["Value"][0] for x in found] == [study_a]
    r = await c.get(instance_path(two_studies["a"]), headers=cookie)
    assert r.status == 200 and len(await r.read()) > 1000
    # The other patient's exam is not granted: the same 404 as a study that does not exist.
    r_other = await c.get(instance_path(two_studies["b"]), headers=cookie)
    r_unknown = await c.get("/dicom-web/studies/1.2.3.4/series/5.6/instances/7.8",
                            headers=cookie)
    assert r_other.status == r_unknown.status == 404
    assert await r_other.json() == await r_unknown.json() == {"status": 404,
                                                               "reason": "not found"}
    # Granting it opens it.
    sessions.grant(sid, uids(two_studies["b"][0])[0])
    assert (await c.get(instance_path(two_studies["b"]), headers=cookie)).status == 200
    await flushed(c)
    rows = audit_rows(store)
    assert {r["professional"] for r in rows} == {"810001234567"}
    assert [r["status"] for r in rows if r["outcome"] == "refused"] == [404, 404]
    assert any("not visible to this session" in r["reason"] for r in rows)


async def test_ended_expired_or_forged_sessions_are_refused(store: Store, clients: list) -> None:
    sessions = SessionStore(store.db)
    c = await serve(store, Guard(sessions=sessions, open_to=[]))
    clients.append(c)
    ended = sessions.create("810001234567")
    sessions.end(ended)
    expired = sessions.create("810001234567", ttl=0.01)
    time.sleep(0.05)
    for sid in (ended, expired, "forged-session-id", "x" * 500):
        r = await c.get("/dicom-web/studies", headers={"Cookie": f"{COOKIE}={sid}"})
        assert r.status == 401
        assert "session unknown or expired" in (await r.json())["reason"]
    # Only a hash of the id is stored: state.db opens no session; creating one drops the
    # expired ones.
    live = sessions.create("810001234567")
    assert len(store.db.query("SELECT 1 FROM sessions")) == 1
    assert live not in str([dict(r) for r in store.db.query("SELECT * FROM sessions")])


def test_the_audit_trail_is_append_only(store: Store) -> None:
    from appliance.audit import record

    record(store.db, "tester", "dicomweb.retrieve", "http", patient_id="PAT-1")
    for sql in ("UPDATE audit_events SET patient_id='' ", "DELETE FROM audit_events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store.db.execute(sql)
    assert len(audit_rows(store)) == 1


async def test_audit_export_csv_and_cli(store: Store, two_studies: Any, clients: list,
                                        tmp_path: Path) -> None:
    sessions = SessionStore(store.db)
    sid = sessions.create("810009999999", studies=frozenset({uids(two_studies["a"][0])[0]}))
    c = await serve(store, Guard(sessions=sessions))
    clients.append(c)
    await c.get(instance_path(two_studies["a"]), headers={"Cookie": f"{COOKIE}={sid}"})
    await c.get(instance_path(two_studies["b"]))
    await flushed(c)
    out = io.StringIO()
    conn = sqlite3.connect(f"file:{store.db.path}?mode=ro", uri=True)
    assert export_csv(conn, out, since=0) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["outcome"] for r in rows] == ["ok", "refused"]
    assert rows[0]["professional"] == "810009999999" and rows[0]["patient_id"] == "PAT-GUARD-A"
    assert int(rows[0]["bytes"]) > 1000 and rows[1]["status"] == "401"
    assert rows[0]["ts"].endswith("+00:00")
    assert export_csv(conn, io.StringIO(), since=time.time() + 60) == 0
    conn.close()

    # The command, on the box's configuration, beside a running store.
    cfg = tmp_path / "box.toml"
    cfg.write_text(config.example(str(store.root.parent)))
    assert store.db.path == config.load(cfg).state_db
    out_file = tmp_path / "audit.csv"
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "audit", "export", "-c", str(cfg),
                        "--since", "2020-01-01", "--out", str(out_file)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "2 audit events" in p.stderr
    assert len(list(csv.DictReader(out_file.open()))) == 2
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "audit", "export", "-c", str(cfg),
                        "--since", "yesterday"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "ISO 8601" in p.stderr


async def test_hostile_headers_never_break_the_guard(store: Store, clients: list) -> None:
    """Arbitrary Authorization, Cookie, KOS and forwarding headers: a clear 4xx (or the site
    tool's 200 for the named address), never a 5xx, and nothing served to a stranger."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sessions = SessionStore(store.db)
    c = await serve(store, Guard(sessions=sessions, open_to=["10.1.1.1"]), behind_gateway=True)
    clients.append(c)
    text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)
    results: list[tuple[int, bool]] = []

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(auth=text, cookie=text, kos=text, forwarded=st.sampled_from(
        ["10.1.1.1", "192.0.2.9", "::1", "not-an-address", ""]))
    def one(auth: str, cookie: str, kos: str, forwarded: str) -> None:
        headers = {"Authorization": auth, "Cookie": f"{COOKIE}={cookie}" if cookie else "",
                   "KOS-SOPInstanceUID": kos, "X-Forwarded-For": forwarded}
        future = asyncio.run_coroutine_threadsafe(c.get("/dicom-web/studies", headers=headers),
                                                  loop)
        r = future.result(30)
        results.append((r.status, forwarded == "10.1.1.1" and not cookie))

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, one)
    assert results
    for status, site in results:
        assert status == (200 if site else 401), (status, site)
