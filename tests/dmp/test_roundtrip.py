"""Round trips through the strict DMP simulator over mTLS, signatures made on SoftHSM."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.dmp import DmpPermanentError, ReferenceId, ReferenceType, publication_actor
from appliance.dmp import codes as C
from tests.dmp.conftest import PATIENT
from tests.dmp.kos import make_kos

ACCESSION = ReferenceId("ACC-0001", "1.2.250.1.999.2.1", ReferenceType.ACCESSION)


async def test_publish_find_retrieve_replace_delete(client, simulator, make_submission, consumer):
    first = make_submission()
    result = await client.publish(first)
    assert result.kos_uid == first.kos_uid

    found = await client.find_documents(PATIENT, consumer)
    kos_entries = [e for e in found.entries if e.mime_type == "application/dicom"]
    assert [e.unique_id for e in kos_entries] == [first.kos_uid]
    entry = kos_entries[0]
    assert entry.status == C.APPROVED
    assert entry.class_code and entry.class_code.code == "31"
    assert entry.type_code and entry.type_code.code == "IMG-KOS"
    assert entry.accession == "ACC-0001"
    assert entry.size == len(first.kos)
    assert {c.code for c in entry.event_codes} == {"CT", "774007"}

    by_acc = await client.find_by_reference_id(PATIENT, ACCESSION, consumer)
    assert first.kos_uid in [e.unique_id for e in by_acc.entries]
    other = ReferenceId("NOPE", "1.2.250.1.999.2.1", ReferenceType.ACCESSION)
    assert (await client.find_by_reference_id(PATIENT, other, consumer)).entries == []

    refs = await client.get_documents([first.kos_uid], PATIENT, publication_actor(first),
                                      return_type="ObjectRef")
    assert refs.refs == [entry.entry_uuid] and refs.entries == []

    kos = await client.retrieve(entry.repository_id, entry.unique_id, PATIENT, consumer)
    assert kos == first.kos

    kos2, uid2 = make_kos(4)
    second = replace(make_submission(), kos=kos2, kos_uid=uid2)
    await client.replace(entry.entry_uuid, second)
    now = await client.find_documents(PATIENT, consumer)
    assert [e.unique_id for e in now.entries if e.mime_type == "application/dicom"] == [uid2]
    old = await client.find_documents(PATIENT, consumer, statuses=(C.DEPRECATED,))
    assert [e.unique_id for e in old.entries] == [first.kos_uid]

    new_entry = next(e for e in now.entries if e.unique_id == uid2)
    await client.delete(new_entry.entry_uuid, second)
    gone = await client.find_documents(PATIENT, consumer)
    assert [e for e in gone.entries if e.mime_type == "application/dicom"] == []
    with pytest.raises(DmpPermanentError) as e:
        await client.retrieve(new_entry.repository_id, uid2, PATIENT, consumer)
    assert e.value.code == "XDSDocumentUniqueIdError"


async def test_archive_hides_from_default_query(client, make_submission, consumer):
    s = make_submission()
    await client.publish(s)
    entry = (await client.get_documents([s.kos_uid], PATIENT, publication_actor(s))).entries[0]
    await client.archive(entry.entry_uuid, s)
    assert [e.unique_id for e in (await client.find_documents(PATIENT, consumer)).entries
            if e.mime_type == "application/dicom"] == []
    archived = await client.find_documents(PATIENT, consumer, statuses=(C.ARCHIVED,))
    assert [e.unique_id for e in archived.entries] == [s.kos_uid]


async def test_event_code_filter(client, make_submission, consumer):
    await client.publish(make_submission())
    ct = await client.find_documents(PATIENT, consumer, event_codes=(
        C.Code("CT", C.MODALITY_SYSTEM),))
    mr = await client.find_documents(PATIENT, consumer, event_codes=(
        C.Code("MR", C.MODALITY_SYSTEM),))
    assert len(ct.entries) == 1 and mr.entries == []


async def test_duplicate_unique_id_refused_and_nothing_stored(client, simulator,
                                                              make_submission):
    s = make_submission()
    await client.publish(s)
    stored = len(simulator.entries)
    again = replace(make_submission(), kos=s.kos, kos_uid=s.kos_uid)
    with pytest.raises(DmpPermanentError) as e:
        await client.publish(again)
    assert e.value.code == "XDSDuplicateUniqueIdInRegistry"
    assert "already used" in e.value.text
    assert len(simulator.entries) == stored


async def test_masked_document_hidden_from_other_structures(client, make_submission, consumer):
    s = make_submission(confidentiality=("MASQUE_PS",))
    await client.publish(s)
    assert (await client.find_documents(PATIENT, consumer)).entries == []
    own = await client.get_documents([s.kos_uid], PATIENT, publication_actor(s))
    assert [e.unique_id for e in own.entries] == [s.kos_uid]
    assert {c.code for c in own.entries[0].confidentiality} == {"N", "MASQUE_PS"}


async def test_access_check(client, simulator, consumer):
    status = await client.check_access(PATIENT, consumer)
    assert status.exists and status.authorization == "VALIDE" and status.may_read
    simulator.add_patient(PATIENT.xds, opposition="yes")
    assert not (await client.check_access(PATIENT, consumer)).may_read
    from appliance.dmp import PatientId
    unknown = PatientId("190017512345678", PATIENT.oid)
    assert not (await client.check_access(unknown, consumer)).exists


async def test_sha1_profile_as_in_ans_samples(dmp_config, token, pki, make_submission, consumer):
    """The ANS samples sign with RSA-SHA1 and SHA-1 digests: configurable, and accepted."""
    from appliance.dmp import DmpClient, TokenSigner
    from tests.dmp.conftest import client_context
    cfg = replace(dmp_config, signature_algorithm="rsa-sha1", digest_algorithm="sha1")
    async with DmpClient(cfg, TokenSigner(token, "sign", cfg.signature_algorithm),
                         client_context(pki)) as c:
        s = make_submission()
        r = await c.publish(s)
        assert b"xmldsig#rsa-sha1" in r.signature_document
        assert [e.unique_id for e in (await c.find_documents(PATIENT, consumer)).entries
                if e.mime_type == "application/dicom"] == [s.kos_uid]


async def test_class_code_filter_lists_kos_only(client, make_submission, consumer):
    s = make_submission()
    await client.publish(s)
    everything = await client.find_documents(PATIENT, consumer)
    kos_only = await client.find_documents(PATIENT, consumer, class_codes=(C.CLASS_IMAGING,))
    assert len(everything.entries) == 2          # the KOS and its signature document
    assert [e.unique_id for e in kos_only.entries] == [s.kos_uid]


async def test_inspection_endpoints_show_what_was_stored(client, pki, simulator,
                                                         make_submission):
    import aiohttp

    from tests.dmp.conftest import client_context
    s = make_submission()
    await client.publish(s)
    base = f"https://127.0.0.1:{simulator.port}/_inspect"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/entries", ssl=client_context(pki)) as r:
            entries = await r.json()
        async with http.get(f"{base}/documents/{s.kos_uid}", ssl=client_context(pki)) as r:
            stored = await r.read()
    assert {e["unique_id"] for e in entries} == {s.kos_uid, s.signature_uid}
    assert stored == s.kos
    assert all(e["status"] == C.APPROVED for e in entries)


def test_simulator_runs_as_a_module_for_the_demo(sim_certs):
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-m", "tests.peers.dmp", "--port", "0", "--cert",
                          str(sim_certs.cert), "--key", str(sim_certs.key), "--client-ca",
                          str(sim_certs.client_ca)], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        info = json.loads(p.stdout.readline())
        assert info["url"].startswith("https://127.0.0.1:") and info["port"] > 0
    finally:
        p.terminate()
        p.wait(10)
