"""CORS default deny with an allow-list, the audit trail, and no patient data in the logs."""

from __future__ import annotations

import logging
from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient

from appliance.store import Store

from .conftest import VIEWER_ORIGIN, Study


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
    rows = audit_rows(filled)
    assert [x["action"] for x in rows] == ["dicomweb.search", "dicomweb.retrieve",
                                           "dicomweb.metadata"]
    for x in rows:
        assert x["patient_id"] == ct.patient_id
        assert x["study_uid"] == ct.study_uid
        assert x["interface"] == "http" and x["outcome"] == "ok"
        assert x["actor"] == "http:127.0.0.1"
        assert x["correlation"].startswith("http-")
    # The search is recorded by key names, never by the values (a patient name here).
    assert "PatientName" in rows[0]["detail"] and "DUPONT" not in rows[0]["detail"]


async def test_refused_or_empty_requests_touch_no_data_and_write_nothing(
        client: TestClient, filled: Store) -> None:
    assert (await client.get("/dicom-web/studies?limit=x")).status == 400
    assert (await client.get("/dicom-web/studies?PatientID=NOBODY")).status == 200
    assert (await client.get("/dicom-web/studies/1.2.3/series/4.5/instances/6.7")).status == 404
    assert audit_rows(filled) == []


async def test_no_audit_no_data(filled: Store, make_client: Any,
                                studies: dict[str, Study]) -> None:
    c = await make_client(filled)
    filled.db.execute("DROP TABLE audit_events")
    for url in ("/dicom-web/studies", instance_url(studies["ct"]), metadata_url(studies["ct"])):
        r = await c.get(url)
        assert r.status == 503, url
        assert b"DICM" not in await r.read()


async def test_custom_actor_is_recorded(filled: Store, make_client: Any) -> None:
    c = await make_client(filled, actor=lambda request: "rpps:10001234567")
    await c.get("/dicom-web/studies")
    assert audit_rows(filled)[-1]["actor"] == "rpps:10001234567"


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
