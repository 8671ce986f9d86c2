"""DMP test fixtures: a test PKI, a SoftHSM2 token holding the signature key, the strict DMP
simulator over mTLS, and a DmpClient pointed at it."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest

from appliance.config import DmpConfig
from appliance.dmp import (
    Actor,
    AuthMode,
    Code,
    DmpClient,
    KosSubmission,
    PatientId,
    TokenSigner,
)
from appliance.dmp.client import MEDECIN
from appliance.keys.testpki import TestPki
from tests.dmp.kos import sample_submission
from tests.dmp.pki import SimulatorCerts, box_client_context, provider_missing, simulator_certs
from tests.peers.dmp import DmpSimulator

TEST_INS_OID = "1.2.250.1.213.1.4.10"
PATIENT = PatientId("248098765432112", TEST_INS_OID)


@pytest.fixture(scope="session")
def sim_certs(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> SimulatorCerts:
    """The simulator's server certificate; skips when the box cannot do TLS with its token key.
    (``pki`` is the shared test PKI of tests/conftest.py.)"""
    reason = provider_missing()
    if reason:
        pytest.skip(reason)
    return simulator_certs(pki, tmp_path_factory.mktemp("dmp-sim"))


@pytest.fixture(scope="package")
def token(pki: TestPki) -> Any:
    t = pki.token(0)
    yield t
    # The TLS contexts go first: closing the last python-pkcs11 session logs the whole process
    # out of the token (PKCS#11 login is per process), under the feet of their provider keys.
    # Then the session closes, so that other areas may load another PKCS#11 module.
    _free_tls_contexts()
    t.close()


@pytest.fixture
def signer(token: Any) -> TokenSigner:
    return TokenSigner(token, "sign", "rsa-sha256")


@pytest.fixture
async def simulator(sim_certs: SimulatorCerts) -> Any:
    sim = DmpSimulator(cert=sim_certs.cert, key=sim_certs.key, client_ca=sim_certs.client_ca)
    await sim.start()
    sim.add_patient(PATIENT.xds)
    yield sim
    await sim.stop()


def client_context(pki: TestPki, with_cert: bool = True, index: int = 0) -> ssl.SSLContext:
    if not with_cert:
        return ssl.create_default_context(cafile=str(pki.bundle))
    return box_client_context(pki, index)


@pytest.fixture
def dmp_config(simulator: DmpSimulator, pki: TestPki) -> DmpConfig:
    return DmpConfig(url=simulator.url, ca_file=pki.bundle, timeout=5.0)


@pytest.fixture
async def client(dmp_config: DmpConfig, signer: TokenSigner, pki: TestPki) -> Any:
    c = DmpClient(dmp_config, signer, client_context(pki))
    yield c
    await c.close()


@pytest.fixture
def make_submission() -> Callable[..., KosSubmission]:
    return sample_submission


@pytest.fixture
def consumer() -> Actor:
    """A radiologist of another structure, authenticated by Pro Santé Connect."""
    return Actor(identifier="810002909371", name="Jean RADIOLOGUE", profession=MEDECIN,
                 specialty=Code("SM44", "1.2.250.1.71.4.2.5", "Radio-diagnostic"),
                 structure_id="10B0000001", sector="SA01", mode=AuthMode.INDIRECTE_RENFORCEE)


@pytest.fixture(scope="package", autouse=True)
def _release_tls_contexts() -> Any:
    """Free the box's TLS contexts once the DMP tests are done: while one lives, pkcs11-provider
    keeps a session object for the auth key, which other areas' key searches would also find."""
    yield
    _free_tls_contexts()


def _free_tls_contexts() -> None:
    import gc

    from tests.dmp import pki as dmp_pki
    dmp_pki._CONTEXTS.clear()
    gc.collect()
