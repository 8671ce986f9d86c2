"""QIDO-RS through a real aiohttp server over a store filled with generated studies."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient

from appliance.store import Store

from .conftest import Study

JSON = {"Accept": "application/dicom+json"}


def values(item: dict[str, Any], tag: str) -> list[Any]:
    return item.get(tag, {}).get("Value", [])


def study_uids(items: list[dict[str, Any]]) -> set[str]:
    return {values(i, "0020000D")[0] for i in items}


async def get_json(client: TestClient, url: str, status: int = 200) -> Any:
    r = await client.get(url, headers=JSON)
    assert r.status == status, await r.text()
    if status == 200:
        assert r.content_type == "application/dicom+json"
        return await r.json(content_type=None)
    return await r.text()


async def test_all_studies_with_counts_and_modalities(client: TestClient,
                                                      studies: dict[str, Study]) -> None:
    items = await get_json(client, "/dicom-web/studies")
    assert study_uids(items) == {s.study_uid for s in studies.values()}
    by_uid = {values(i, "0020000D")[0]: i for i in items}
    ct = by_uid[studies["ct"].study_uid]
    assert values(ct, "00201206") == [2]          # NumberOfStudyRelatedSeries
    assert values(ct, "00201208") == [8]          # NumberOfStudyRelatedInstances
    assert values(ct, "00080061") == ["CT"]       # ModalitiesInStudy
    assert values(ct, "00100020") == ["PAT-A-1001"]
    assert values(ct, "00080050") == ["ACC-CT-0001"]
    assert values(ct, "00100010") == [{"Alphabetic": "DUPONT^JEANNE"}]
    assert ct["00080020"]["vr"] == "DA" and len(values(ct, "00080020")[0]) == 8
    assert values(ct, "00081190") == [
        f"{client.make_url('/dicom-web')}/studies/{studies['ct'].study_uid}"]
    # StudyDescription is not a default attribute (OHIF asks for it with includefield).
    assert "00081030" not in ct


@pytest.mark.parametrize("query, expected", [
    ("PatientID=PAT-A-1001", {"ct"}),
    ("PatientID=PAT-A-*", {"ct"}),
    ("PatientID=PAT-?-1001", {"ct"}),
    ("PatientID=*", {"ct", "mr"}),
    ("PatientID=pat-a-1001", set()),              # LO matching is case-sensitive
    ("PatientID=PAT-A", set()),                   # no implicit prefix match
    ("AccessionNumber=ACC-MR-0002", {"mr"}),
    ("AccessionNumber=ACC-*", {"ct", "mr"}),
    ("ModalitiesInStudy=MR", {"mr"}),
    ("ModalitiesInStudy=CT,MR", {"ct", "mr"}),
    ("ModalitiesInStudy=CT%5CMR", {"ct", "mr"}),  # backslash list, URL-encoded
    ("ModalitiesInStudy=US", set()),
    ("PatientName=dupont*", {"ct"}),              # PN: case-insensitive
    ("00100020=PAT-B-2002", {"mr"}),              # key given as a tag
    ("StudyDate=19000101-", {"ct", "mr"}),
    ("StudyDate=-19991231", set()),
    ("StudyDescription=IRM*", {"mr"}),
    ("PatientID=PAT-A-1001&ModalitiesInStudy=MR", set()),
])
async def test_study_matching(client: TestClient, studies: dict[str, Study], query: str,
                              expected: set[str]) -> None:
    items = await get_json(client, f"/dicom-web/studies?{query}")
    assert study_uids(items) == {studies[k].study_uid for k in expected}


async def test_study_uid_list_matching(client: TestClient, studies: dict[str, Study]) -> None:
    ct, mr = studies["ct"].study_uid, studies["mr"].study_uid
    assert study_uids(await get_json(client, f"/dicom-web/studies?StudyInstanceUID={ct}")) == {ct}
    both = await get_json(client, f"/dicom-web/studies?StudyInstanceUID={ct},{mr}")
    assert study_uids(both) == {ct, mr}
    assert await get_json(client, "/dicom-web/studies?StudyInstanceUID=1.2.3.4") == []


async def test_limit_offset_page_through_everything(client: TestClient,
                                                    studies: dict[str, Study]) -> None:
    first = await get_json(client, "/dicom-web/studies?limit=1")
    second = await get_json(client, "/dicom-web/studies?limit=1&offset=1")
    third = await get_json(client, "/dicom-web/studies?limit=1&offset=2")
    assert len(first) == len(second) == 1 and third == []
    assert study_uids(first) | study_uids(second) == {s.study_uid for s in studies.values()}


async def test_server_maximum_truncates_with_warning(filled: Store, make_client: Any) -> None:
    c = await make_client(filled, max_results=1)
    r = await c.get("/dicom-web/studies", headers=JSON)
    assert r.status == 200
    assert len(await r.json(content_type=None)) == 1
    assert "maximum" in r.headers["Warning"]


async def test_includefield(client: TestClient, studies: dict[str, Study]) -> None:
    st = studies["ct"].study_uid
    items = await get_json(client, f"/dicom-web/studies?StudyInstanceUID={st}"
                                   "&includefield=00081030,InstitutionName")
    assert values(items[0], "00081030") == ["CT THORAX AVEC INJECTION"]
    # Not in the index: read from the study's instances.
    assert values(items[0], "00080080") == ["CENTRE DE RADIOLOGIE DEMO"]


async def test_series_of_a_study(client: TestClient, studies: dict[str, Study]) -> None:
    ct = studies["ct"]
    items = await get_json(client, f"/dicom-web/studies/{ct.study_uid}/series")
    expected = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in ct.files}
    assert {values(i, "0020000E")[0] for i in items} == expected
    assert [values(i, "00200011")[0] for i in items] == [1, 2]      # ordered by SeriesNumber
    for i in items:
        assert values(i, "00080060") == ["CT"]
        assert values(i, "00201209") == [4]                        # NumberOfSeriesRelatedInstances
        se = values(i, "0020000E")[0]
        assert values(i, "00081190")[0].endswith(f"/dicom-web/studies/{ct.study_uid}/series/{se}")
    one = await get_json(client, f"/dicom-web/studies/{ct.study_uid}/series?SeriesNumber=2")
    assert [values(i, "00200011")[0] for i in one] == [2]
    assert await get_json(client, f"/dicom-web/studies/{ct.study_uid}/series?Modality=MR") == []


async def test_instances_of_a_series(client: TestClient, studies: dict[str, Study]) -> None:
    mr = studies["mr"]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in mr.files]
    se = headers[0].SeriesInstanceUID
    items = await get_json(client, f"/dicom-web/studies/{mr.study_uid}/series/{se}/instances")
    assert [values(i, "00080018")[0] for i in items] == [h.SOPInstanceUID for h in headers]
    assert [values(i, "00200013")[0] for i in items] == [1, 2, 3]
    assert values(items[0], "00280010") == [256] and values(items[0], "00280011") == [256]
    assert values(items[0], "00080016") == [str(headers[0].SOPClassUID)]
    assert values(items[0], "00081190")[0].endswith(
        f"/studies/{mr.study_uid}/series/{se}/instances/{headers[0].SOPInstanceUID}")
    sop = headers[1].SOPInstanceUID
    one = await get_json(client, f"/dicom-web/studies/{mr.study_uid}/series/{se}/instances"
                                 f"?SOPInstanceUID={sop}&includefield=00180050")
    assert [values(i, "00080018")[0] for i in one] == [sop]
    assert values(one[0], "00180050") == [3.0]                    # SliceThickness from the JSON


@pytest.mark.parametrize("query, word", [
    ("StudyInstanceUID=1.2.abc", "not a valid UID"),
    ("StudyInstanceUID=1.2.*", "not a valid UID"),
    ("limit=-1", "limit"),
    ("limit=ten", "limit"),
    ("offset=1.5", "offset"),
    ("StudyDate=2024", "YYYYMMDD"),
    ("StudyDate=20241341", "calendar"),
    ("StudyDate=20250101-20240101", "after its end"),
    ("Colour=blue", "not a query parameter"),
    ("SeriesDescription=x", "cannot match on this attribute at the study level"),
    ("includefield=NoSuchKeyword", "includefield"),
    ("PatientID=a&PatientID=b", "more than once"),
    ("NumberOfStudyRelatedSeries=2", "cannot be matched"),
    ("00081111.00081150=1.2", "sequences"),
])
async def test_bad_query_is_400_with_a_message(client: TestClient, query: str,
                                               word: str) -> None:
    text = await get_json(client, f"/dicom-web/studies?{query}", status=400)
    assert word in text


async def test_unknown_parent_is_404_and_bad_parent_is_400(client: TestClient,
                                                           studies: dict[str, Study]) -> None:
    assert "study not found" in await get_json(client, "/dicom-web/studies/1.2.3/series",
                                               status=404)
    st = studies["ct"].study_uid
    assert "series not found" in await get_json(
        client, f"/dicom-web/studies/{st}/series/1.2.3/instances", status=404)
    # A series of another study is not reachable under this one.
    mr_series = pydicom.dcmread(studies["mr"].files[0], stop_before_pixels=True).SeriesInstanceUID
    await get_json(client, f"/dicom-web/studies/{st}/series/{mr_series}/instances", status=404)
    assert "not a valid UID" in await get_json(client, "/dicom-web/studies/x.y/series",
                                               status=400)


async def test_xml_is_not_acceptable(client: TestClient) -> None:
    r = await client.get("/dicom-web/studies",
                         headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status == 406
    assert "application/dicom+json" in await r.text()


async def test_fuzzy_matching_request_gets_a_warning(client: TestClient) -> None:
    r = await client.get("/dicom-web/studies?fuzzymatching=true&limit=101&offset=0"
                         "&includefield=00081030,00080060", headers=JSON)
    assert r.status == 200
    assert "fuzzymatching" in r.headers["Warning"]
    r = await client.get("/dicom-web/studies?fuzzymatching=false", headers=JSON)
    assert r.status == 200 and "Warning" not in r.headers


async def test_empty_store_answers_an_empty_list(store: Store, make_client: Any) -> None:
    c = await make_client(store)
    r = await c.get("/dicom-web/studies")
    assert r.status == 200 and await r.json(content_type=None) == []


async def test_includefield_all(client: TestClient, studies: dict[str, Study]) -> None:
    mr = studies["mr"]
    st = (await get_json(client, f"/dicom-web/studies?StudyInstanceUID={mr.study_uid}"
                                 "&includefield=all"))[0]
    assert values(st, "00081030") == ["IRM CEREBRALE"]
    se = pydicom.dcmread(mr.files[0], stop_before_pixels=True).SeriesInstanceUID
    inst = await get_json(client, f"/dicom-web/studies/{mr.study_uid}/series/{se}/instances"
                                  "?includefield=all")
    assert values(inst[0], "00180050") == [3.0]          # any attribute of the instance ...
    assert values(inst[0], "00080018")                   # ... with the indexed ones
    assert "7FE00010" not in inst[0]                     # but never bulk data
