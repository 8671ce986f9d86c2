"""CORS default deny with an allow-list, the audit trail, and no patient data in the logs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient

from appliance.store import Store

from appliance.audit import AuditUnavailable

from .conftest import VIEWER_ORIGIN, Study, flush_audit, loopback_guard


def instance_url(study: Study) -> str:
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def metadata_url(study: Study) -> str:
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"


def audit_rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.db.query("SELECT * FROM audit_events ORDER BY id")]


@pytest.mark.parametrize("which", ["studies", "instance", "metadata", "404"])
async def test_cors_allowed_origin_only(client: TestClient, studies: dict[str, Study],
                                        which: str) -> None:
    url = {"studies": "/dicom-web/studies", "instance": instance_url(studies["ct"]),
           "metadata": metadata_url(studies["ct"]),
           "404": "/dicom-web/studies/1.2.3/series"}[which]
    r = await client.get(url, headers={"Origin": VIEWER_ORIGIN})
    assert r.headers.get("Access-Control-Allow-Origin") == VIEWER_ORIGIN
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Origin" in r.headers.getall("Vary", [])
    await r.read()
    r = await client.get(url, headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.get(url)
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_preflight(client: TestClient) -> None:
    req = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}
    r = await client.options("/dicom-web/studies", headers={"Origin": VIEWER_ORIGIN, **req})
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "GET" in r.headers["Access-Control-Allow-Methods"]
    r = await client.options("/dicom-web/studies",
                             headers={"Origin": "https://evil.example.com", **req})
    assert r.status == 403
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_default_app_never_allows_cross_origin(filled: Store, make_client: Any) -> None:
    c = await make_client(filled)
    for origin in (VIEWER_ORIGIN, "null", "*"):
        r = await c.get("/dicom-web/studies", headers={"Origin": origin})
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        r = await c.options("/dicom-web/studies", headers={"Origin": origin,
                                                           "Access-Control-Request-Method": "GET"})
        assert r.status == 403


async def test_cors_predicate_hook(filled: Store, make_client: Any) -> None:
    c = await make_client(filled, cors_origins=lambda o: o.endswith(".hopital.example.fr"))
    r = await c.get("/dicom-web/studies", headers={"Origin": "https://pacs.hopital.example.fr"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://pacs.hopital.example.fr"


async def test_every_data_access_is_audited(client: TestClient, filled: Store,
                                            studies: dict[str, Study]) -> None:
    ct = studies["ct"]
    assert audit_rows(filled) == []
    r = await client.get("/dicom-web/studies?PatientName=DUPONT*")
    assert r.status == 200
    r = await client.get(instance_url(ct))
    assert r.status == 200 and await r.read()
    r = await client.get(metadata_url(ct))
    assert r.status == 200
    await flush_audit(client)
    rows = audit_rows(filled)
    assert [x["action"] for x in rows] == ["dicomweb.search", "dicomweb.retrieve",
                                           "dicomweb.metadata"]
    for x in rows:
        assert x["patient_id"] == ct.patient_id
        assert x["study_uid"] == ct.study_uid
        assert x["interface"] == "http" and x["outcome"] == "ok"
        assert x["actor"] == "site:127.0.0.1"
        assert x["status"] == 200 and x["detail"].startswith("site: ")
        assert x["correlation"].startswith("http-")
    # The search is recorded by key names, never by the values (a patient name here).
    assert "PatientName" in rows[0]["detail"] and "DUPONT" not in rows[0]["detail"]


async def test_a_search_records_each_patient_it_shows(client: TestClient, filled: Store,
                                                      studies: dict[str, Study]) -> None:
    r = await client.get("/dicom-web/studies")
    assert r.status == 200 and len(await r.json(content_type=None)) == 2
    await flush_audit(client)
    rows = audit_rows(filled)
    assert {(x["patient_id"], x["study_uid"]) for x in rows} == {
        (s.patient_id, s.study_uid) for s in studies.values()}
    assert all(x["action"] == "dicomweb.search" for x in rows)


async def test_refused_or_empty_requests_are_audited_without_patient_data(
        client: TestClient, filled: Store) -> None:
    assert (await client.get("/dicom-web/studies?limit=x")).status == 400
    assert (await client.get("/dicom-web/studies?PatientID=NOBODY")).status == 200
    assert (await client.get("/dicom-web/studies/1.2.3/series/4.5/instances/6.7")).status == 404
    await flush_audit(client)
    rows = audit_rows(filled)
    assert [(r["outcome"], r["status"]) for r in rows] == [("refused", 400), ("ok", 200),
                                                           ("refused", 404)]
    assert all(r["patient_id"] == "" for r in rows)
    assert "limit" in rows[0]["reason"] and "no result" in rows[1]["detail"]
    assert "NOBODY" not in str(rows)                  # query values never reach the trail


def urls(studies: dict[str, Study]) -> list[str]:
    return ["/dicom-web/studies", instance_url(studies["ct"]), metadata_url(studies["ct"])]


async def test_no_audit_no_data_when_committing_each_event(filled: Store, make_client: Any,
                                                           studies: dict[str, Study]) -> None:
    c = await make_client(filled, audit_flush_interval=0)
    filled.db.execute("DROP TABLE audit_events")
    for url in urls(studies):
        r = await c.get(url)
        assert r.status == 503, url
        assert b"DICM" not in await r.read()


async def test_batched_audit_fails_closed_and_recovers(filled: Store, make_client: Any,
                                                       studies: dict[str, Study]) -> None:
    c = await make_client(filled)
    filled.db.execute("ALTER TABLE audit_events RENAME TO audit_hidden")
    assert (await c.get("/dicom-web/studies")).status == 200     # queued before the failure
    with pytest.raises(AuditUnavailable):
        await flush_audit(c)
    for url in urls(studies):
        r = await c.get(url)
        assert r.status == 503, url
        assert b"DICM" not in await r.read()
    filled.db.execute("ALTER TABLE audit_hidden RENAME TO audit_events")
    deadline = asyncio.get_running_loop().time() + 5
    while (await c.get("/dicom-web/studies")).status != 200:      # the writer retries by itself
        assert asyncio.get_running_loop().time() < deadline, "audit writer did not recover"
        await asyncio.sleep(0.1)
    await flush_audit(c)
    # The events queued before the failure were kept and written, not lost: two searches,
    # each showing two patients.
    assert [r["action"] for r in audit_rows(filled)] == ["dicomweb.search"] * 4


async def test_queued_events_reach_the_table_without_help(filled: Store, make_client: Any,
                                                          studies: dict[str, Study]) -> None:
    c = await make_client(filled)
    await c.get(instance_url(studies["mr"]))
    await asyncio.sleep(0.5)                                      # > the 0.1 s flush interval
    assert [r["action"] for r in audit_rows(filled)] == ["dicomweb.retrieve"]
    await c.get(instance_url(studies["mr"]))
    await c.close()                                               # shutdown flushes the rest
    assert len(audit_rows(filled)) == 2


async def test_served_bytes_are_recorded(client: TestClient, filled: Store,
                                         studies: dict[str, Study]) -> None:
    r = await client.get(instance_url(studies["ct"]))
    body = await r.read()
    await flush_audit(client)
    row = audit_rows(filled)[-1]
    assert row["action"] == "dicomweb.retrieve"
    assert 0 < row["bytes"] <= len(body)          # the instance, without the multipart framing
    assert row["series_uid"] == pydicom.dcmread(studies["ct"].files[0]).SeriesInstanceUID


async def test_logs_carry_no_patient_data(client: TestClient, studies: dict[str, Study],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await client.get("/dicom-web/studies?PatientID=PAT-A-1001&PatientName=DUPONT*")
    await client.get("/dicom-web/studies?PatientID=PAT-A-1001&limit=bad")
    await client.get(metadata_url(studies["ct"]))
    assert caplog.records, "requests should be logged"
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for secret in ("PAT-A-1001", "DUPONT", "JEANNE"):
        assert secret not in text


async def test_app_can_be_built_before_the_store_opens(tmp_path: Any, studies: dict[str, Study],
                                                       make_client: Any) -> None:
    """The box builds its HTTP apps first and opens the store when its component starts."""
    from appliance import config
    from appliance.dicomweb import make_app

    store = Store(config.parse(config.example(str(tmp_path / "late"))))
    make_app(store, guard=loopback_guard())
    store.open()
    try:
        for f in studies["mr"].files:
            store.ingest_bytes(f.read_bytes())
        c = await make_client(store)
        assert (await c.get(instance_url(studies["mr"]))).status == 200
        await flush_audit(c)
        assert [r["action"] for r in audit_rows(store)] == ["dicomweb.retrieve"]
    finally:
        store.close()
