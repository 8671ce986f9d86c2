"""Fixtures of the keys area. ``pki`` (session scope) is meant to move to the root conftest so the
DMP and peer tests can use the same tokens and certificates."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator

import pytest

from appliance.keys import softhsm
from appliance.keys.testpki import TestPki, make_test_pki


def _provider_missing() -> str | None:
    if not glob.glob("/usr/lib/*/ossl-modules/pkcs11.so") and not glob.glob(
            "/usr/lib*/ossl-modules/pkcs11.so"):
        return ("pkcs11-provider not installed "
                "(apt-get install -t bookworm-backports pkcs11-provider)")
    return None


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    """IGC-Santé-shaped test PKI, two structures, leaf keys on SoftHSM (SOFTHSM2_CONF is set)."""
    if softhsm.module_path() is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 not installed (Debian package softhsm2)")
    yield make_test_pki(tmp_path_factory.mktemp("pki"), spares=["drimbox-test-pin"])


@pytest.fixture(scope="session")
def tls_pki(pki: TestPki) -> TestPki:
    """``pki``, skipping when pkcs11-provider (needed for TLS with a token key) is absent."""
    missing = _provider_missing()
    if missing:
        pytest.skip(missing)
    return pki


@pytest.fixture
def pkcs11_tool() -> str:
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        pytest.skip("pkcs11-tool not installed (Debian package opensc)")
    return tool
