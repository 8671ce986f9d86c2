"""The source role against real peers: Orthanc (PACS), the strict DMP simulator (a separate
process over mTLS), and a real ``drimbox run`` whose keys are on SoftHSM."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.conftest import free_port
from tests.peers.network import (  # noqa: F401  (re-exported for the test modules)
    Simulator,
    SourceBox,
    sop_uids,
    source_box_config,
    start_simulator,
    study_for,
)
from tests.peers.orthanc import Orthanc, available

@pytest.fixture(scope="session")
def dmp_simulator(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    from tests.dmp.pki import provider_missing

    reason = provider_missing()
    if reason:
        pytest.skip(reason)
    sim = start_simulator(pki, tmp_path_factory.mktemp("dmp-sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if available():
        pytest.skip(str(available()))
    box_dicom = free_port()
    with Orthanc(modalities={"box": ("DRIMBOX", "127.0.0.1", box_dicom)},
                 workdir=tmp_path_factory.mktemp("orthanc")) as o:
        o.box_dicom_port = box_dicom  # type: ignore[attr-defined]
        yield o


