"""DMP test fixtures: a test PKI, a SoftHSM2 token holding the signature key, the strict DMP
simulator over mTLS, and a DmpClient pointed at it."""

from __future__ import annotations

import ssl
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from appliance.config import DmpConfig
from appliance.dmp import (Actor, AuthMode, Code, DmpClient, KosSubmission, Organization,
                           PatientId, PatientInfo, Person, ReferenceId, ReferenceType,
                           TokenSigner)
from appliance.dmp.client import MEDECIN
from tests.dmp.kos import make_kos
from tests.dmp.pki import Pki, SoftHsmToken, make_pki, softhsm_available
from tests.peers.dmp import DmpSimulator

TEST_INS_OID = "1.2.250.1.213.1.4.10"
PATIENT = PatientId("248098765432112", TEST_INS_OID)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("dmp-pki"))


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Any:
    reason = softhsm_available()
    if reason:
        pytest.skip(reason)
    t = SoftHsmToken(tmp_path_factory.mktemp("dmp-hsm"), pki)
    yield t
    t.close()


@pytest.fixture
def signer(token: SoftHsmToken) -> TokenSigner:
    return TokenSigner(token, "sign", "rsa-sha256")


@pytest.fixture
async def simulator(pki: Pki) -> Any:
    sim = DmpSimulator(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_file)
    await sim.start()
    sim.add_patient(PATIENT.xds)
    yield sim
    await sim.stop()


def client_context(pki: Pki, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if with_cert:
        # [until keys lands] file key generated at test time; production uses the token key
        # through pkcs11-provider (appliance.keys.tls.client_context).
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


@pytest.fixture
def dmp_config(simulator: DmpSimulator, pki: Pki) -> DmpConfig:
    return DmpConfig(url=simulator.url, ca_file=pki.ca_file, timeout=5.0)


@pytest.fixture
async def client(dmp_config: DmpConfig, signer: TokenSigner, pki: Pki) -> Any:
    c = DmpClient(dmp_config, signer, client_context(pki))
    yield c
    await c.close()


@pytest.fixture
def make_submission() -> Callable[..., KosSubmission]:
    def make(n_instances: int = 3, **overrides: Any) -> KosSubmission:
        kos, uid = make_kos(n_instances)
        now = datetime.now(timezone.utc)
        s = KosSubmission(
            patient=PATIENT,
            patient_info=PatientInfo("PAT-TEST", "Alice", "19800102", "F"),
            author=Person("899700367909", "DOC0036790", "KIT"),
            institution=Organization("CABINET TEST DRIMBOX", "499700367909006"),
            legal_authenticator=Person("899700367909", "DOC0036790", "KIT"),
            facility_type=Code("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel"),
            practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
            event_codes=(Code("CT", "1.2.250.1.213.1.1.5.618", "Computed Tomography"),
                         Code("774007", "1.2.250.1.213.1.1.5.695", "Tête et cou")),
            reference_ids=(
                ReferenceId("ACC-0001", "1.2.250.1.999.2.1", ReferenceType.ACCESSION),
                ReferenceId("1.2.3.4.5.6.7", "1.2.3.4.5.6", ReferenceType.STUDY_UID),
                ReferenceId("ORD-0001", "1.2.250.1.999.2.2", ReferenceType.ORDER)),
            kos=kos, kos_uid=uid, creation_time=now,
            service_start=now - timedelta(hours=1), service_stop=now - timedelta(minutes=30),
        )
        return replace(s, **overrides) if overrides else s
    return make


@pytest.fixture
def consumer() -> Actor:
    """A radiologist of another structure, authenticated by Pro Santé Connect."""
    return Actor(identifier="810002909371", name="Jean RADIOLOGUE", profession=MEDECIN,
                 specialty=Code("SM44", "1.2.250.1.71.4.2.5", "Radio-diagnostic"),
                 structure_id="10B0000001", sector="SA01", mode=AuthMode.INDIRECTE_RENFORCEE)
