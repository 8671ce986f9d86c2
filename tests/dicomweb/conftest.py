"""Fixtures for the DICOMweb tests: a store filled with generated studies, a real aiohttp server
over it, and a private Orthanc (Debian package + DICOMweb plugin) loaded with the same files.

Orthanc is the shared peer launcher, tests/peers/orthanc.py.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance import config
from appliance.dicomweb import AccessLogger, make_app
from appliance.dicomweb.server import AUDIT_KEY
from appliance.generate import synthetic_study
from appliance.store import Store
from appliance.trust.guard import Guard
from tests.peers.orthanc import Orthanc, available

VIEWER_ORIGIN = "https://viewer.example.org"


def loopback_guard() -> Guard:
    """The guard of a box whose administrator opened DICOMweb to site tools on loopback
    (``dicomweb.open_to``): the ground these read-side tests run on."""
    return Guard(open_to=["127.0.0.0/8", "::1"])


@dataclass(frozen=True)
class Study:
    files: list[Path]
    study_uid: str
    patient_id: str
    accession: str


def _uids(path: Path) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    """A 2-series CT and a 1-series MR of two patients (small, generated once per session)."""
    root = tmp_path_factory.mktemp("studies")
    ct = synthetic_study("CT", 4, series=2, out_dir=root / "ct", accession="ACC-CT-0001",
                         patient_id="PAT-A-1001", patient_name="DUPONT^JEANNE")
    mr = synthetic_study("MR", 3, out_dir=root / "mr", accession="ACC-MR-0002",
                         patient_id="PAT-B-2002", patient_name="MARTIN^PAUL")
    return {"ct": Study(ct, _uids(ct[0])[0], "PAT-A-1001", "ACC-CT-0001"),
            "mr": Study(mr, _uids(mr[0])[0], "PAT-B-2002", "ACC-MR-0002")}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    cfg = config.parse(config.example(str(tmp_path / "data")))
    s = Store(cfg, synchronous="NORMAL")
    s.open()
    yield s
    s.close()


@pytest.fixture
def filled(store: Store, studies: dict[str, Study]) -> Store:
    for st in studies.values():
        for f in st.files:
            store.ingest_bytes(f.read_bytes())
    return store


async def _client(store: Store, **kwargs: object) -> TestClient:
    app = web.Application()
    kwargs.setdefault("guard", loopback_guard())
    sub = make_app(store, **kwargs)  # type: ignore[arg-type]
    app.add_subapp("/dicom-web", sub)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(access_log_class=AccessLogger)  # as the daemon's runner does
    client = TestClient(server)
    await client.start_server()
    client.dicomweb = sub  # type: ignore[attr-defined]  # for flush_audit()
    return client


async def flush_audit(client: TestClient) -> None:
    """Commit the audit events the server has queued (it batches them)."""
    await client.dicomweb[AUDIT_KEY].flush()  # type: ignore[attr-defined]


@pytest.fixture
async def client(filled: Store) -> AsyncIterator[TestClient]:
    c = await _client(filled, cors_origins=[VIEWER_ORIGIN])
    yield c
    await c.close()


@pytest.fixture
async def make_client() -> AsyncIterator[object]:
    """Build a client over any store with make_app options; all closed at teardown."""
    made: list[TestClient] = []

    async def make(store: Store, **kwargs: object) -> TestClient:
        c = await _client(store, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


# -- Orthanc, the real peer (tests/peers/orthanc.py) --------------------------------------------

def peer_json(peer: Orthanc, path: str) -> Any:
    """GET a DICOMweb path (``/studies...``) from Orthanc's plugin, as DICOM JSON."""
    req = urllib.request.Request(peer.url + "/dicom-web" + path,
                                 headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    reason = available()
    if reason:
        pytest.skip(reason)
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


@pytest.fixture(scope="session")
def orthanc_loaded(orthanc: Orthanc, studies: dict[str, Study]) -> Orthanc:
    for st in studies.values():
        orthanc.upload(st.files)
    return orthanc


