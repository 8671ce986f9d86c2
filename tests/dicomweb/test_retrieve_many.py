"""WADO-RS retrieve of a whole study and of a series (the KOS RetrieveURL is a series URL): every
instance, byte for byte, one part each, streamed; checked with aiohttp's multipart reader and
with dicomweb-client, a standard DICOMweb client."""

from __future__ import annotations

import asyncio
from typing import Any

import pydicom
from aiohttp.test_utils import TestClient

from .conftest import Study
from .test_wado import EXPLICIT_LE, parts


def _series(study: Study) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for f in study.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.setdefault(ds.SeriesInstanceUID, set()).add(f.read_bytes())
    return out


async def test_series_retrieve_sends_each_instance_of_the_series(
        client: TestClient, studies: dict[str, Study]) -> None:
    ct = studies["ct"]
    for series_uid, files in _series(ct).items():
        r = await client.get(f"/dicom-web/studies/{ct.study_uid}/series/{series_uid}",
                             headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert r.status == 200
        assert r.headers["Transfer-Encoding"] == "chunked"     # streamed, not buffered
        assert f"transfer-syntax={EXPLICIT_LE}" in r.headers["Content-Type"]
        got = await parts(r)
        assert {body for _, body in got} == files
        assert all(h["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
                   for h, _ in got)


async def test_study_retrieve_sends_every_instance(client: TestClient,
                                                   studies: dict[str, Study]) -> None:
    ct = studies["ct"]
    r = await client.get(f"/dicom-web/studies/{ct.study_uid}")
    assert r.status == 200
    assert {body for _, body in await parts(r)} == {f.read_bytes() for f in ct.files}


async def test_unknown_study_or_series_is_404_and_single_part_is_406(
        client: TestClient, studies: dict[str, Study]) -> None:
    ct = studies["ct"]
    assert (await client.get("/dicom-web/studies/1.2.3.999")).status == 404
    assert (await client.get(f"/dicom-web/studies/{ct.study_uid}/series/1.2.3")).status == 404
    r = await client.get(f"/dicom-web/studies/{ct.study_uid}",
                         headers={"Accept": "application/dicom"})
    assert r.status == 406 and "multipart/related" in await r.text()
    r = await client.get(f"/dicom-web/studies/{ct.study_uid}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'})
    assert r.status == 406


async def test_dicomweb_client_retrieves_study_and_series(client: TestClient,
                                                          studies: dict[str, Study]) -> None:
    from dicomweb_client.api import DICOMwebClient

    base = str(client.make_url("/dicom-web"))
    ct = studies["ct"]
    series = _series(ct)

    def run() -> tuple[list[Any], dict[str, list[Any]]]:
        dw = DICOMwebClient(url=base)
        study = dw.retrieve_study(ct.study_uid)
        return study, {s: dw.retrieve_series(ct.study_uid, s) for s in series}

    study, by_series = await asyncio.get_running_loop().run_in_executor(None, run)
    assert {ds.SOPInstanceUID for ds in study} == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct.files}
    for series_uid, datasets in by_series.items():
        assert len(datasets) == len(series[series_uid])
        assert {ds.SeriesInstanceUID for ds in datasets} == {series_uid}
        assert all(ds.pixel_array.shape == (ds.Rows, ds.Columns) for ds in datasets)
