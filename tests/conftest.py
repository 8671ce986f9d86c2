"""Fixtures shared by every test area. Area fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def conformance_path() -> Path | None:
    """The ANS DRIM-M test data: $DRIMBOX_CONFORMANCE, else ../shared/conformance/drim-m-data."""
    env = os.environ.get("DRIMBOX_CONFORMANCE")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "conformance" / "drim-m-data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    p = conformance_path()
    if p is None:
        pytest.skip("ANS conformance data not found: set DRIMBOX_CONFORMANCE to the drim-m-data "
                    "directory (default ../shared/conformance/drim-m-data beside the checkout)")
    return p


def dicom_only(config_text: str) -> str:
    """A box configuration without the roles that need a token and the DMP (foundation tests)."""
    return (config_text.replace("source = true", "source = false")
            .replace("consumer = true", "consumer = false")
            .replace("[hsm]\n", "[hsm]\nenabled = false\n")
            .replace("[dmp]\n", "[dmp]\nenabled = false\n"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (tests run in parallel with other services)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_ports(config_text: str, ports: dict[int, int]) -> str:
    """The example configuration with its ports changed: ``{8443: 50123, ...}``. Whole lines
    only: a chain of ``str.replace`` once turned a free port 2575x into 506457."""
    for old, new in ports.items():
        config_text = re.sub(rf"^port = {old}$", f"port = {new}", config_text, flags=re.M)
    return config_text


@pytest.fixture
def port_factory():
    return free_port


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The IGC-Santé-shaped test PKI (``appliance.keys.testpki``), leaf keys on SoftHSM; one per
    test process, shared by every area, because SoftHSM reads SOFTHSM2_CONF only once."""
    import shutil

    from appliance.keys import softhsm
    from appliance.keys.testpki import make_test_pki

    if softhsm.module_path() is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 not installed (Debian package softhsm2)")
    yield make_test_pki(tmp_path_factory.mktemp("pki"), spares=["drimbox-test-pin"])


@pytest.fixture(scope="session")
def dmp_simulator(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The strict DMP simulator in its own process (mTLS, server certificate from ``pki``)."""
    from tests.dmp.pki import provider_missing
    from tests.peers.network import start_simulator

    reason = provider_missing()
    if reason:
        pytest.skip(reason)
    sim = start_simulator(pki, tmp_path_factory.mktemp("dmp-sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Orthanc as the site PACS; it knows the box as DRIMBOX on ``pacs.box_dicom_port``."""
    from tests.peers.orthanc import Orthanc, available

    if available():
        pytest.skip(str(available()))
    box_dicom = free_port()
    with Orthanc(modalities={"box": ("DRIMBOX", "127.0.0.1", box_dicom)},
                 workdir=tmp_path_factory.mktemp("orthanc")) as o:
        o.box_dicom_port = box_dicom  # type: ignore[attr-defined]
        yield o
