"""Real PACS round trip: Orthanc accepts the box's KOS and the generated rejection notes by C-STORE,
and hands a note back over DIMSE the way the IOCM flow receives it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import KeyObjectSelectionDocumentStorage  # type: ignore[attr-defined]

from appliance.dicom.kos import (
    REJECTED_FOR_PATIENT_SAFETY,
    RejectionNote,
    RejectionRequest,
    build_kos,
    build_rejection_note,
    parse_kos,
    rejection_note,
)
from tests.peers import orthanc as orthanc_peer

from .conftest import make_instances, study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pacs() -> Iterator[orthanc_peer.Orthanc]:
    reason = orthanc_peer.available()
    if reason:
        pytest.skip(reason)
    if shutil.which("storescu") is None:
        pytest.skip("storescu not found: install the Debian package dcmtk")
    with orthanc_peer.Orthanc(aet="PACS") as o:
        yield o


def storescu(pacs: orthanc_peer.Orthanc, data: bytes) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        return subprocess.run(["storescu", "-aet", "KOSTEST", "-aec", pacs.aet, "127.0.0.1",
                               str(pacs.dicom_port), f.name], capture_output=True, text=True,
                              env=orthanc_peer.DCMTK_ENV, timeout=60, check=False)


def orthanc_id(pacs: orthanc_peer.Orthanc, sop_uid: str) -> str:
    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
    assert len(found) == 1, found
    return str(found[0])


def test_orthanc_stores_the_manifest_unchanged(pacs, make_request):
    built = build_kos(make_request([("CT", 3), ("MR", 2)]))
    r = storescu(pacs, built.data)
    assert r.returncode == 0, r.stderr
    back = parse_kos(pacs.instance_file(orthanc_id(pacs, built.sop_instance_uid)))
    assert back == parse_kos(built.data)


def test_a_rejection_note_sent_back_by_the_pacs_is_recognised(pacs):
    req = RejectionRequest("IPP000123", "DUPONT^Hélène", study(), make_instances([("CT", 2)]),
                           reason=REJECTED_FOR_PATIENT_SAFETY)
    built = build_rejection_note(req)
    assert storescu(pacs, built.data).returncode == 0

    received: list[RejectionNote | None] = []
    done = threading.Event()

    def on_store(event: evt.Event) -> int:
        received.append(rejection_note(event.dataset))
        done.set()
        return 0x0000

    ae = AE(ae_title="BOXIOCM")
    ae.add_supported_context(KeyObjectSelectionDocumentStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        pacs.set_modality("box", "BOXIOCM", "127.0.0.1", server.server_address[1])
        pacs.post("/modalities/box/store", {"Resources": [orthanc_id(pacs, built.sop_instance_uid)],
                                            "Synchronous": True})
        assert done.wait(30)
    finally:
        server.shutdown()
    note = received[0]
    assert note is not None and note.reason == REJECTED_FOR_PATIENT_SAFETY
    assert note.rejected_sop_instance_uids == {i.sop_instance_uid for i in req.rejected}
    assert note.study_uids == {req.study.study_uid}
