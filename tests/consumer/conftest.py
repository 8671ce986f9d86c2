"""Consumer-listing fixtures: the DMP area's simulator, token and client (tests/dmp/conftest.py),
and a source-box stand-in that publishes real manifests (appliance.dicom.kos) through DmpClient."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pydicom.uid import generate_uid

from appliance.dicom import kos as kosmod
from appliance.dmp import (
    Actor,
    AuthMode,
    Code,
    DmpClient,
    KosSubmission,
    ReferenceId,
    ReferenceType,
)
from appliance.dmp.client import MEDECIN
from appliance.dmp.codes import MODALITY_SYSTEM, REGION_SYSTEM
from tests.dmp.conftest import (  # noqa: F401  (the DMP area's fixtures, reused as they are)
    PATIENT,
    _release_tls_contexts,
    client,
    client_context,
    consumer,
    dmp_config,
    make_submission,
    signer,
    sim_certs,
    simulator,
    token,
)

ACCESSION_ROOT = "1.2.250.1.999.2.1"
SOURCE_URL = "https://db1.test.mesimagesmedicales.fr"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class Published:
    """One exam as a source box published it: what the consumer must find again."""

    submission: KosSubmission
    study_uid: str
    accession: str
    modality: str
    region: str
    series: dict[str, tuple[str, ...]]    # series UID -> SOP Instance UIDs

    @property
    def kos_uid(self) -> str:
        return self.submission.kos_uid


def build_manifest(modality: str, accession: str, *, study_uid: str | None = None,
                   n_series: int = 2, per_series: int = 3, public_url: str = SOURCE_URL,
                   ins: str = PATIENT.ins) -> tuple[kosmod.BuiltKos, str, list[kosmod.Instance]]:
    study_uid = study_uid or generate_uid()
    sop_class = MR_IMAGE if modality == "MR" else CT_IMAGE
    instances = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            instances.append(kosmod.Instance(series_uid=series_uid, modality=modality,
                                             series_number=s + 1, series_description=f"S{s + 1}",
                                             sop_class_uid=sop_class,
                                             sop_instance_uid=generate_uid(),
                                             instance_number=i + 1))
    req = kosmod.KosRequest(
        patient=kosmod.Patient(ins=ins, ins_oid=PATIENT.oid, family_name="TEST",
                               given_names="ALICE"),
        study=kosmod.Study(study_uid=study_uid, accession_number=accession,
                           accession_issuer_oid=ACCESSION_ROOT),
        instances=instances, public_url=public_url)
    return kosmod.build_kos(req), study_uid, instances


@pytest.fixture
def publish(client: DmpClient,  # noqa: F811  (the imported fixtures, requested by name)
            make_submission: Callable[..., KosSubmission],  # noqa: F811
            ) -> Callable[..., Awaitable[Published]]:
    """Publish one exam as a source box would (KOS + XAdES signature, ITI-41, mode INDIRECTE)."""

    async def run(modality: str, region: str, accession: str, *, days_ago: int = 1,
                  confidentiality: tuple[str, ...] = (), kos: bytes | None = None,
                  **manifest: Any) -> Published:
        built, study_uid, instances = build_manifest(modality, accession, **manifest)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
        s = make_submission(
            event_codes=(Code(modality, MODALITY_SYSTEM, modality),
                         Code(region, REGION_SYSTEM, region)),
            reference_ids=(ReferenceId(accession, ACCESSION_ROOT, ReferenceType.ACCESSION),
                           ReferenceId(study_uid, "1.2.3.4.5.6", ReferenceType.STUDY_UID)),
            kos=built.data if kos is None else kos, kos_uid=built.sop_instance_uid,
            confidentiality=confidentiality, creation_time=start + timedelta(hours=2),
            service_start=start, service_stop=start + timedelta(minutes=20))
        await client.publish(s)
        series: dict[str, list[str]] = {}
        for i in instances:
            series.setdefault(i.series_uid, []).append(i.sop_instance_uid)
        return Published(s, study_uid, accession, modality, region,
                         {k: tuple(v) for k, v in series.items()})

    return run


@pytest.fixture
async def three_exams(publish: Callable[..., Awaitable[Published]]) -> list[Published]:
    """A head CT, a knee MR, and a masked chest CT (MASQUE_PS), oldest first."""
    return [await publish("CT", "774007", "ACC-CT-1", days_ago=3),
            await publish("MR", "72696002", "ACC-MR-2", days_ago=2),
            await publish("CT", "51185008", "ACC-CT-3", days_ago=1,
                          confidentiality=("MASQUE_PS",))]


@pytest.fixture
def author_colleague() -> Actor:
    """A radiologist of the publishing structure, authenticated by Pro Santé Connect."""
    return Actor(identifier="899700367909", name="Kit DOC", profession=MEDECIN,
                 structure_id="499700367909006", sector="SA07",
                 mode=AuthMode.INDIRECTE_RENFORCEE)


async def inject_fault(pki: Any, sim: Any, fault: dict[str, Any]) -> None:
    """Through the simulator's HTTP control endpoint, over the same mTLS as the services."""
    url = f"https://127.0.0.1:{sim.port}/_control/faults"
    async with aiohttp.ClientSession() as s, s.post(url, json=fault, ssl=client_context(pki)) as r:
        assert r.status == 200, await r.text()
