"""WADO-RS series /metadata: the precomputed JSON with this server's base, gzip when asked."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pydicom
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.dicomweb import AccessLogger, make_app
from appliance.store import BASE, Store

from .conftest import Study, loopback_guard


def series_url(study: Study) -> tuple[str, list[pydicom.Dataset]]:
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in study.files]
    h = headers[0]
    return (f"/dicom-web/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}/metadata",
            [x for x in headers if x.SeriesInstanceUID == h.SeriesInstanceUID])


async def raw_client(store: Store, **kwargs: Any) -> TestClient:
    """A client that does not decompress, to see what goes on the wire."""
    app = web.Application()
    kwargs.setdefault("guard", loopback_guard())
    app.add_subapp("/dicom-web", make_app(store, **kwargs))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(access_log_class=AccessLogger)
    c = TestClient(server, auto_decompress=False)
    await c.start_server()
    return c


async def test_gzip_client_gets_gzip_with_the_base_filled_in(filled: Store,
                                                             studies: dict[str, Study]) -> None:
    url, headers = series_url(studies["ct"])
    c = await raw_client(filled)
    try:
        r = await c.get(url, headers={"Accept-Encoding": "gzip, deflate",
                                      "Accept": "application/dicom+json"})
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in r.headers["Vary"]
        assert r.content_type == "application/dicom+json"
        text = gzip.decompress(await r.read()).decode()
        root = str(c.make_url("/dicom-web"))
    finally:
        await c.close()
    assert BASE not in text
    items = json.loads(text)
    assert [i["00080018"]["Value"][0] for i in items] == [h.SOPInstanceUID for h in headers]
    first = items[0]
    assert first["7FE00010"]["BulkDataURI"] == (
        f"{root}/studies/{headers[0].StudyInstanceUID}/series/{headers[0].SeriesInstanceUID}"
        f"/instances/{headers[0].SOPInstanceUID}/frames/1")
    assert first["00100020"]["Value"] == ["PAT-A-1001"]


async def test_plain_client_gets_plain_json(filled: Store, studies: dict[str, Study]) -> None:
    url, headers = series_url(studies["mr"])
    c = await raw_client(filled, base_url="https://box.example.org/dicom-web/")
    try:
        r = await c.get(url, headers={"Accept-Encoding": "identity"})
        assert r.status == 200
        assert "Content-Encoding" not in r.headers
        items = json.loads(await r.read())
    finally:
        await c.close()
    assert len(items) == len(headers) == 3
    assert items[0]["7FE00010"]["BulkDataURI"].startswith(
        f"https://box.example.org/dicom-web/studies/{headers[0].StudyInstanceUID}/series/")


async def test_new_instance_shows_up_in_metadata(filled: Store, studies: dict[str, Study],
                                                 tmp_path: Any, client: TestClient) -> None:
    from pydicom.uid import generate_uid

    url, headers = series_url(studies["mr"])
    before = await (await client.get(url)).json(content_type=None)
    ds = pydicom.dcmread(studies["mr"].files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    filled.ingest_bytes((tmp_path / "extra.dcm").read_bytes())
    after = await (await client.get(url)).json(content_type=None)
    assert len(after) == len(before) + 1
    assert ds.SOPInstanceUID in {i["00080018"]["Value"][0] for i in after}


async def test_metadata_errors(client: TestClient, studies: dict[str, Study]) -> None:
    st = studies["ct"].study_uid
    r = await client.get(f"/dicom-web/studies/{st}/series/1.2.3/metadata")
    assert r.status == 404
    r = await client.get(f"/dicom-web/studies/{st}/series/1.2.-/metadata")
    assert r.status == 400
    url, _ = series_url(studies["ct"])
    r = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status == 406
