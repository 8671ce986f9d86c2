"""The ANS XDS samples (official DRIM-M referencing data): the simulator accepts their structure,
and the box's own submission has the same slots, classification schemes, identification schemes,
associations and VIHF attributes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from tests.dmp.conftest import client_context
from tests.peers.dmp.checks import (
    NS,
    Refusal,
    check_document_entry,
    check_submission_set,
    check_vihf,
    parse_xml,
)

SAMPLES = ("validateur-xds/XDS.xml", "cross-validateur/echantillons-de-validation/XDS.xml")


def sample(conformance_dir: Path, name: str) -> etree._Element:
    return parse_xml((conformance_dir / "echantillons-validateurs" / name).read_bytes(), 10**7)


def shape(rol: etree._Element) -> dict[str, dict[str, set[str]]]:
    """Per object (SubmissionSet, KOS entry, signature entry): slot names, classification schemes
    (and nodes), identification schemes; plus the association types."""
    out: dict[str, dict[str, set[str]]] = {}
    objects = rol.findall("rim:RegistryPackage", NS) + rol.findall("rim:ExtrinsicObject", NS)
    for o in objects:
        kind = ("submission" if o.tag.endswith("RegistryPackage") else
                "kos" if o.get("mimeType") == "application/dicom" else "signature")
        out[kind] = {
            "slots": {s.get("name", "") for s in o.findall("rim:Slot", NS)},
            "classifications": {c.get("classificationScheme") or "node:" + c.get(
                "classificationNode", "") for c in o.findall("rim:Classification", NS)},
            "identifications": {e.get("identificationScheme", "")
                                for e in o.findall("rim:ExternalIdentifier", NS)},
        }
    out["associations"] = {"types": {a.get("associationType", "")
                                     for a in rol.findall("rim:Association", NS)}}
    return out


def vihf_attributes(env: etree._Element) -> set[str]:
    return {a.get("Name", "") for a in env.iterfind(".//saml2:Attribute", NS)}


def test_simulator_accepts_the_structure_of_the_ans_validator_sample(conformance_dir):
    env = sample(conformance_dir, SAMPLES[0])
    # The sample's signature value and certificate are masked ("XXXXXXX"): structure only.
    vihf = check_vihf(env, [], verify=False)
    assert vihf.mode == "INDIRECTE"
    rol = env.find(".//lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    sub = check_submission_set(rol)
    kinds = [check_document_entry(eo, sub.patient_id, None) for eo in sub.documents]
    assert sorted(kinds) == [False, True]   # one KOS, one signature


def test_cross_validation_sample_structure_accepted_but_its_patient_mismatch_refused(
        conformance_dir):
    """The cross-validation sample's KOS entry names patient 274075176079430 while its
    SubmissionSet and VIHF name 162018885045327: a registry must refuse that, and the simulator
    does. Everything else in it is accepted."""
    env = sample(conformance_dir, SAMPLES[1])
    check_vihf(env, [], verify=False)
    rol = env.find(".//lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    sub = check_submission_set(rol)
    kos, sig = sorted(sub.documents, key=lambda eo: eo.get("mimeType") != "application/dicom")
    with pytest.raises(Refusal) as e:
        check_document_entry(kos, sub.patient_id, None)
    assert e.value.code == "XDSPatientIdDoesNotMatch"
    kos_patient = next(x.get("value") for x in kos.findall("rim:ExternalIdentifier", NS)
                       if x.get("value", "").endswith("^NH"))
    assert check_document_entry(kos, kos_patient, None) is False   # consistent otherwise
    assert check_document_entry(sig, sub.patient_id, None) is True


async def test_box_submission_has_the_shape_of_the_ans_samples(conformance_dir, client, pki,
                                                               simulator, make_submission):
    await client.publish(make_submission())
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://127.0.0.1:{simulator.port}/_inspect/submissions/last",
                         ssl=client_context(pki)) as r:
            ours = shape(parse_xml(await r.read(), 10**7))
    reference = sample(conformance_dir, SAMPLES[0])
    theirs = shape(reference.find(".//lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS))
    assert ours == theirs
    cross = sample(conformance_dir, SAMPLES[1])
    cross_shape = shape(cross.find(".//lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS))
    for kind, parts in cross_shape.items():     # the cross sample omits hash/size/URI
        for part, names in parts.items():
            assert names <= ours[kind][part], (kind, part, names - ours[kind][part])


async def test_box_vihf_has_the_attributes_of_the_ans_sample(conformance_dir, client, signer,
                                                             make_submission):
    from appliance.dmp import publication_actor, vihf
    s = make_submission()
    ours = vihf.build(publication_actor(s), s.patient.xds, client.software, signer)
    names = {a.get("Name", "") for a in ours.iterfind(".//saml2:Attribute", NS)}
    assert names == vihf_attributes(sample(conformance_dir, SAMPLES[0]))
