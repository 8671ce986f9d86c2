"""Fixtures for the DICOMweb tests: a store filled with generated studies, a real aiohttp server
over it, and a private Orthanc (Debian package + DICOMweb plugin) loaded with the same files.

The Orthanc launcher is minimal on purpose; tests/peers/orthanc.py (branch ``dicom``) will replace
it once merged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance import config
from appliance.dicomweb import AccessLogger, make_app
from appliance.generate import synthetic_study
from appliance.store import Store
from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
VIEWER_ORIGIN = "https://viewer.example.org"


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
    app.add_subapp("/dicom-web", make_app(store, **kwargs))  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(access_log_class=AccessLogger)  # as the daemon's runner does
    client = TestClient(server)
    await client.start_server()
    return client


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


# -- Orthanc, the real peer --------------------------------------------------------------------

@dataclass(frozen=True)
class Orthanc:
    url: str          # http://127.0.0.1:port
    dicomweb: str     # url + /dicom-web

    def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def get_json(self, path: str) -> object:
        return json.loads(self.get(path, {"Accept": "application/dicom+json"}))

    def upload(self, files: list[Path]) -> None:
        for f in files:
            req = urllib.request.Request(self.url + "/instances", data=f.read_bytes(),
                                         headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if not os.path.exists(ORTHANC):
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc DICOMweb plugin missing: {DICOMWEB_PLUGIN} (apt-get install "
                    "orthanc-dicomweb)")
    d = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": "DRIMBOX-TEST-PACS",
        "StorageDirectory": str(d / "storage"),
        "IndexDirectory": str(d / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "TESTPACS",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (d / "orthanc.json").write_text(json.dumps(cfg))
    log = open(d / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(d / "orthanc.json")], stdout=log,
                            stderr=subprocess.STDOUT, cwd=d)
    peer = Orthanc(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{http_port}/dicom-web")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                peer.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start; log:\n"
                                       + (d / "orthanc.log").read_text(errors="replace")[-3000:])
                time.sleep(0.2)
        yield peer
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def orthanc_loaded(orthanc: Orthanc, studies: dict[str, Study]) -> Orthanc:
    for st in studies.values():
        orthanc.upload(st.files)
    return orthanc


