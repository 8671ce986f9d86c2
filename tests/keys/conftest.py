"""Fixtures of the keys area. ``pki`` (session scope) lives in tests/conftest.py so the DMP and
peer tests use the same tokens and certificates (SoftHSM reads its configuration once per
process)."""

from __future__ import annotations

import glob
import shutil

import pytest

from appliance.keys.testpki import TestPki


def _provider_missing() -> str | None:
    if not glob.glob("/usr/lib/*/ossl-modules/pkcs11.so") and not glob.glob(
            "/usr/lib*/ossl-modules/pkcs11.so"):
        return ("pkcs11-provider not installed "
                "(apt-get install -t bookworm-backports pkcs11-provider)")
    return None


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
