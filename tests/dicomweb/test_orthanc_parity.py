"""The box's QIDO/WADO answers agree with Orthanc's DICOMweb plugin on the same studies.

Orthanc is the real peer (Debian package, private config, free ports); the same generated files
are loaded into both.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp.test_utils import TestClient

from tests.peers.orthanc import Orthanc

from .conftest import Study, peer_json

pytestmark = pytest.mark.integration


def summary(items: Any, level: str) -> dict[str, tuple[Any, ...]]:
    """UID -> the counts and matching attributes a user compares, normalised."""
    def v(item: dict[str, Any], tag: str) -> list[Any]:
        return item.get(tag, {}).get("Value", [])

    out: dict[str, tuple[Any, ...]] = {}
    for i in items:
        if level == "study":
            out[v(i, "0020000D")[0]] = (int(v(i, "00201206")[0]), int(v(i, "00201208")[0]),
                                        tuple(sorted(v(i, "00080061"))), v(i, "00100020"),
                                        v(i, "00080050"))
        elif level == "series":
            out[v(i, "0020000E")[0]] = (int(v(i, "00201209")[0]), v(i, "00080060"),
                                        [int(x) for x in v(i, "00200011")])
        else:
            out[v(i, "00080018")[0]] = (v(i, "00080016"), [int(x) for x in v(i, "00200013")])
    return out


async def box_json(client: TestClient, path: str) -> Any:
    r = await client.get("/dicom-web" + path, headers={"Accept": "application/dicom+json"})
    assert r.status == 200, await r.text()
    return await r.json(content_type=None)


@pytest.mark.parametrize("query", [
    "", "?PatientID=PAT-A-1001", "?PatientID=PAT-*", "?AccessionNumber=ACC-MR-0002",
    "?ModalitiesInStudy=MR", "?ModalitiesInStudy=CT", "?PatientID=NOBODY", "?limit=1&offset=0",
    "?AccessionNumber=ACC-*", "?PatientName=DUPONT*", "?PatientName=dupont*",
    "?PatientName=DUPONT", "?StudyDate=19000101-", "?StudyDescription=IRM*",
])
async def test_study_search_matches_orthanc(client: TestClient, orthanc_loaded: Orthanc,
                                            query: str) -> None:
    mine = summary(await box_json(client, "/studies" + query), "study")
    theirs = summary(peer_json(orthanc_loaded, "/studies" + query), "study")
    if "limit=1" in query:      # the order of a page is each server's choice; its size is not
        assert len(mine) == len(theirs) == 1
    else:
        assert mine == theirs


async def test_study_uid_search_matches_orthanc(client: TestClient, orthanc_loaded: Orthanc,
                                                studies: dict[str, Study]) -> None:
    for s in studies.values():
        q = f"/studies?StudyInstanceUID={s.study_uid}"
        assert summary(await box_json(client, q), "study") == \
            summary(peer_json(orthanc_loaded, q), "study")


async def test_series_and_instances_match_orthanc(client: TestClient, orthanc_loaded: Orthanc,
                                                  studies: dict[str, Study]) -> None:
    for s in studies.values():
        path = f"/studies/{s.study_uid}/series"
        mine = summary(await box_json(client, path), "series")
        assert mine == summary(peer_json(orthanc_loaded, path), "series")
        assert mine
        for se in mine:
            path = f"/studies/{s.study_uid}/series/{se}/instances"
            mine_i = summary(await box_json(client, path), "instance")
            assert mine_i == summary(peer_json(orthanc_loaded, path), "instance")
            assert len(mine_i) == mine[se][0]


async def test_instance_bytes_match_orthanc(client: TestClient, orthanc_loaded: Orthanc,
                                            studies: dict[str, Study]) -> None:
    f = studies["ct"].files[0]
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    path = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    r = await client.get("/dicom-web" + path, headers={"Accept": accept})
    reader = aiohttp.MultipartReader.from_response(r)
    part = await reader.next()
    assert isinstance(part, aiohttp.BodyPartReader)
    mine = bytes(await part.read())
    async with aiohttp.ClientSession() as s:
        async with s.get(orthanc_loaded.url + "/dicom-web" + path, headers={"Accept": accept}) as r2:
            assert r2.status == 200
            part2 = await aiohttp.MultipartReader.from_response(r2).next()
            assert isinstance(part2, aiohttp.BodyPartReader)
            theirs = bytes(await part2.read())
    assert mine == theirs == f.read_bytes()


async def test_series_metadata_covers_what_orthanc_reports(client: TestClient,
                                                           orthanc_loaded: Orthanc,
                                                           studies: dict[str, Study]) -> None:
    ds = pydicom.dcmread(studies["mr"].files[0], stop_before_pixels=True)
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    mine = {i["00080018"]["Value"][0]: i for i in await box_json(client, path)}
    theirs = {i["00080018"]["Value"][0]: i for i in peer_json(orthanc_loaded, path)}
    assert mine.keys() == theirs.keys()
    for sop, item in mine.items():
        # Same data elements (Orthanc may add its own, such as InstanceAvailability).
        assert set(item) <= set(theirs[sop]) | {"00020010"}, set(item) - set(theirs[sop])
        assert "BulkDataURI" in item["7FE00010"]
        for tag in ("00100020", "0020000D", "00200013", "00280010"):
            assert item[tag]["Value"] == theirs[sop][tag]["Value"], tag
