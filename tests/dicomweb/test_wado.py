"""WADO-RS retrieve of one instance: the stored bytes, exactly, with honest negotiation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp.test_utils import TestClient
from pydicom.uid import RLELossless

from appliance.generate import synthetic_study
from appliance.store import Store

from .conftest import Study

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def url_of(path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


async def parts(resp: aiohttp.ClientResponse) -> list[tuple[dict[str, str], bytes]]:
    reader = aiohttp.MultipartReader.from_response(resp)
    out = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        out.append((dict(part.headers), bytes(await part.read())))
    return out


@pytest.mark.parametrize("accept", [
    None,
    "*/*",
    "multipart/related",
    'multipart/related; type="application/dicom"',                  # default: Explicit VR LE
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}",
    # The ANS validator style: several syntaxes with q values; only the stored one can be served.
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.70; q=0.9,'
    ' multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80;q=0.8,'
    f' multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}; q=0.4',
])
async def test_instance_is_the_stored_file_in_one_part(client: TestClient,
                                                       studies: dict[str, Study],
                                                       accept: str | None) -> None:
    f = studies["ct"].files[1]     # 512x512 CT: about 525 KB, several read chunks
    r = await client.get(url_of(f), headers={"Accept": accept} if accept else {})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert f"transfer-syntax={EXPLICIT_LE}" in r.headers["Content-Type"]
    got = await parts(r)
    assert len(got) == 1
    headers, body = got[0]
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert body == f.read_bytes()
    assert int(headers["Content-Length"]) == len(body)


async def test_single_part_application_dicom(client: TestClient,
                                             studies: dict[str, Study]) -> None:
    f = studies["mr"].files[0]
    r = await client.get(url_of(f), headers={"Accept": "application/dicom"})
    assert r.status == 200
    assert r.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert await r.read() == f.read_bytes()


@pytest.fixture(scope="module")
def rle_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic_study("MR", 2, out_dir=tmp_path_factory.mktemp("rle"),
                           transfer_syntax=RLELossless)


async def test_compressed_instance_needs_its_syntax_or_star(store: Store, make_client: Any,
                                                            rle_files: list[Path]) -> None:
    for f in rle_files:
        store.ingest_bytes(f.read_bytes())
    c = await make_client(store)
    url = url_of(rle_files[0])
    # Naming no syntax asks for Explicit VR LE: that would need transcoding, not offered yet.
    r = await c.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status == 406
    text = await r.text()
    assert RLELossless in text and "transcod" in text
    for accept in ('multipart/related; type="application/dicom"; transfer-syntax=*',
                   f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}',
                   "*/*"):
        r = await c.get(url, headers={"Accept": accept})
        assert r.status == 200, accept
        assert f"transfer-syntax={RLELossless}" in r.headers["Content-Type"]
        (headers, body), = await parts(r)
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={RLELossless}"
        assert body == rle_files[0].read_bytes()


@pytest.mark.parametrize("accept", [
    "image/jpeg",
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
    "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90",
])
async def test_not_acceptable_is_406_with_a_reason(client: TestClient, studies: dict[str, Study],
                                                   accept: str) -> None:
    r = await client.get(url_of(studies["ct"].files[0]), headers={"Accept": accept})
    assert r.status == 406
    assert "transfer syntax" in await r.text()


@pytest.mark.parametrize("accept", ['multipart/related; type="application/dicom', "nonsense",
                                    "multipart/related; q=2"])
async def test_malformed_accept_is_400(client: TestClient, studies: dict[str, Study],
                                       accept: str) -> None:
    r = await client.get(url_of(studies["ct"].files[0]), headers={"Accept": accept})
    assert r.status == 400
    assert "Accept" in await r.text()


async def test_unknown_and_misplaced_instances_are_404(client: TestClient,
                                                       studies: dict[str, Study]) -> None:
    ct = pydicom.dcmread(studies["ct"].files[0], stop_before_pixels=True)
    mr = pydicom.dcmread(studies["mr"].files[0], stop_before_pixels=True)
    base = f"/dicom-web/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances"
    assert (await client.get(f"{base}/1.2.3.4")).status == 404
    # An existing SOP Instance UID under the wrong study/series is not found either.
    assert (await client.get(f"{base}/{mr.SOPInstanceUID}")).status == 404
    r = await client.get(f"{base}/1.2.x")
    assert r.status == 400 and "not a valid UID" in await r.text()


async def test_file_gone_from_disk_is_404_not_500(store: Store, make_client: Any,
                                                  studies: dict[str, Study]) -> None:
    f = studies["mr"].files[0]
    stored = store.ingest_bytes(f.read_bytes())
    stored.path.unlink()
    c = await make_client(store)
    assert (await c.get(url_of(f))).status == 404


async def test_chunked_reads_when_sendfile_is_off(client: TestClient, studies: dict[str, Study],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The path used over TLS or with AIOHTTP_NOSENDFILE: 256 KiB reads in the executor."""
    from appliance.dicomweb import server

    monkeypatch.setattr(server, "USE_SENDFILE", False)
    reads: list[int] = []
    real_read = server.DicomWeb._run

    async def spy(fn: Any, *args: Any) -> Any:
        out = await real_read(fn, *args)
        if getattr(fn, "__name__", "") == "read":
            reads.append(len(out))
        return out

    monkeypatch.setattr(server.DicomWeb, "_run", staticmethod(spy))
    f = studies["ct"].files[2]
    r = await client.get(url_of(f))
    assert r.status == 200
    (_, body), = await parts(r)
    assert body == f.read_bytes()
    assert max(reads) == server.CHUNK and len(reads) >= 3    # 525 KB in 256 KiB reads
