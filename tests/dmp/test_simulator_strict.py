"""The simulator refuses what the real DMP would refuse: tampered signatures, untrusted signers,
wrong modes, unknown patients, mismatching hashes, incomplete metadata. Each refusal reaches the
caller as a permanent error with the DMP's code, and nothing is stored."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from appliance.dmp import AuthMode, DmpClient, DmpPermanentError, PatientId, publication_actor, soap
from appliance.dmp.codes import NS
from tests.dmp.conftest import PATIENT, client_context
from tests.dmp.pki import name


class Tampering(DmpClient):
    """A client that alters its own message after signing, like an attacker in the middle."""

    def __init__(self, *a, tamper: Callable[[etree._Element, list], None], **k) -> None:
        super().__init__(*a, **k)
        self._tamper = tamper

    async def _call(self, service, action, env, attachments=None):
        self._tamper(env, attachments or [])
        return await super()._call(service, action, env, attachments)


def _first(env: etree._Element, path: str) -> etree._Element:
    el = env.find(path, NS)
    assert el is not None, path
    return el


def alter_vihf(env, _):
    for at in env.iterfind(".//saml2:Attribute", NS):
        if at.get("Name") == "Identifiant_Structure":
            at[0].text = "999999999999999"


def alter_kos(env, atts):
    atts[0].content = atts[0].content + b"\x00"


def fix_hash(env, obj: str, content: bytes) -> None:
    """Make the metadata hash/size agree with altered content (a careful attacker)."""
    for slot in env.iterfind(f".//rim:ExtrinsicObject[@id='{obj}']/rim:Slot", NS):
        if slot.get("name") == "hash":
            slot[0][0].text = hashlib.sha1(content).hexdigest()
        if slot.get("name") == "size":
            slot[0][0].text = str(len(content))


def alter_kos_and_metadata(env, atts):
    atts[0].content = atts[0].content + b"\x00"
    fix_hash(env, "DocumentKOS", atts[0].content)


def drop_class_code(env, _):
    eo = _first(env, ".//rim:ExtrinsicObject[@id='DocumentKOS']")
    for c in eo.findall("rim:Classification", NS):
        if c.get("classificationScheme") == "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a":
            eo.remove(c)


def wrong_patient_format(env, _):
    for e in env.iterfind(".//rim:ExternalIdentifier", NS):
        if e.get("value", "").endswith("^NH"):
            e.set("value", e.get("value").replace("&ISO^NH", "&ISO^PI"))


def alter_xades(env, atts):
    atts[1].content = atts[1].content.replace(b"<xades:SigningTime>20", b"<xades:SigningTime>19")
    fix_hash(env, "Signature01", atts[1].content)


def drop_signs_association(env, _):
    for a in env.iterfind(".//rim:Association", NS):
        if a.get("associationType") == "urn:ihe:iti:2007:AssociationType:signs":
            a.getparent().remove(a)


def drop_message_id(env, _):
    h = _first(env, "soap:Header")
    h.remove(_first(h, "wsa:MessageID"))


@pytest.mark.parametrize("tamper, code", [
    (alter_vihf, "FailedCheck"),
    (alter_kos, "XDSNonIdenticalHash"),
    (alter_kos_and_metadata, "XDSRegistryMetadataError"),   # XAdES manifest digest is stale
    (drop_class_code, "XDSRegistryMetadataError"),
    (wrong_patient_format, "XDSRegistryMetadataError"),
    (alter_xades, "XDSRegistryMetadataError"),
    (drop_signs_association, "XDSRegistryMetadataError"),
    (drop_message_id, "XDSRegistryError"),
])
async def test_tampered_submission_refused(dmp_config, signer, pki, simulator, make_submission,
                                           tamper, code):
    async with Tampering(dmp_config, signer, client_context(pki), tamper=tamper) as c:
        with pytest.raises(DmpPermanentError) as e:
            await c.publish(make_submission())
    assert e.value.code == code, e.value
    assert simulator.entries == {}


async def test_unknown_patient_refused(client, simulator, make_submission):
    other = PatientId("190017512345678", PATIENT.oid)
    with pytest.raises(DmpPermanentError) as e:
        await client.publish(make_submission(patient=other))
    assert e.value.code == "XDSUnknownPatientId"


async def test_publication_needs_mode_indirecte(client, make_submission):
    s = make_submission()
    actor = replace(publication_actor(s), mode=AuthMode.INDIRECTE_RENFORCEE)
    with pytest.raises(DmpPermanentError) as e:
        await client.publish(s, actor)
    assert e.value.code == "FailedAuthentication" and "INDIRECTE" in e.value.text


async def test_reads_by_the_box_alone_limited_to_its_own_documents(client, make_submission,
                                                                   consumer):
    s = make_submission()
    await client.publish(s)
    own = replace(publication_actor(s))
    stranger = replace(consumer, mode=AuthMode.INDIRECTE)
    assert len((await client.find_documents(PATIENT, own)).entries) == 2   # KOS + signature
    assert (await client.find_documents(PATIENT, stranger)).entries == []


async def test_query_for_another_patient_than_the_vihf_refused(client, simulator, consumer):
    other = PatientId("190017512345678", PATIENT.oid)
    simulator.add_patient(other.xds)

    class Lying(DmpClient):
        def _vihf(self, actor, patient):
            return super()._vihf(actor, other)

    async with Lying(client._dmp_config, client._signer, client._ssl) as c:  # type: ignore
        with pytest.raises(DmpPermanentError) as e:
            await c.find_documents(PATIENT, consumer)
    assert e.value.code == "FailedAuthentication"


class ForeignSigner:
    """The token key, presented with a certificate the DMP does not trust (or not its own)."""

    def __init__(self, inner, cert: x509.Certificate) -> None:
        self.inner, self.certificate, self.algorithm = inner, cert, inner.algorithm

    def sign(self, data: bytes) -> bytes:
        return self.inner.sign(data)


async def test_untrusted_signing_certificate_refused(dmp_config, signer, pki, simulator,
                                                     make_submission):
    from appliance.keys.testpki import _ca, _leaf
    key = rsa.generate_private_key(65537, 2048)
    rogue_ca = _ca(name("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"), key, None, key, 0)
    rogue = _leaf(signer.certificate.public_key(), signer.certificate.subject, "signature",
                  rogue_ca, key)
    async with DmpClient(dmp_config, ForeignSigner(signer, rogue), client_context(pki)) as c:
        with pytest.raises(DmpPermanentError) as e:
            await c.publish(make_submission())
    assert e.value.code == "FailedAuthentication"
    assert simulator.entries == {}


async def test_certificate_of_another_key_refused(dmp_config, signer, pki, simulator,
                                                  make_submission):
    other = pki.issue(rsa.generate_private_key(65537, 2048).public_key(),
                      signer.certificate.subject, "signature")
    async with DmpClient(dmp_config, ForeignSigner(signer, other), client_context(pki)) as c:
        with pytest.raises(DmpPermanentError) as e:
            await c.publish(make_submission())
    assert e.value.code == "FailedCheck"


async def test_vihf_signed_by_another_organisation_than_the_tls_client_refused(
        dmp_config, pki, simulator, make_submission):
    from appliance.dmp import TokenSigner
    with pki.token(1) as other_token:     # structure 2's signature key, structure 1's TLS key
        async with DmpClient(dmp_config, TokenSigner(other_token, "sign"),
                             client_context(pki, index=0)) as c:
            with pytest.raises(DmpPermanentError) as e:
                await c.publish(make_submission())
    assert e.value.code == "FailedAuthentication" and "another organisation" in e.value.text


async def test_replace_of_unknown_entry_refused(client, simulator, make_submission):
    with pytest.raises(DmpPermanentError) as e:
        await client.replace("urn:uuid:00000000-0000-4000-8000-000000000000", make_submission())
    assert e.value.code == "UnresolvedReferenceException"
    assert simulator.entries == {}


async def test_delete_twice_refused(client, make_submission):
    s = make_submission()
    await client.publish(s)
    entry = (await client.get_documents([s.kos_uid], PATIENT, publication_actor(s))).entries[0]
    await client.delete(entry.entry_uuid, s)
    with pytest.raises(DmpPermanentError) as e:
        await client.delete(entry.entry_uuid, s)
    assert e.value.code == "UnresolvedReferenceException"


async def test_raw_request_without_vihf_refused(pki, simulator):
    import aiohttp
    env = soap.envelope("urn:ihe:iti:2007:RegistryStoredQuery", simulator.url + "/registry",
                        etree.Element("{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}"
                                      "AdhocQueryRequest"), None)
    async with aiohttp.ClientSession() as s:
        async with s.post(simulator.url + "/registry", data=etree.tostring(env), ssl=client_context(
                pki), headers={"Content-Type": "application/soap+xml"}) as r:
            body = await r.read()
    assert r.status == 500 and b"InvalidSecurity" in body
    assert base64


def wrap_vihf_id(env, _):
    """Signature wrapping: a second element carrying the assertion's ID."""
    a = env.find(".//saml2:Assertion", NS)
    decoy = etree.SubElement(env.find("soap:Header", NS), "{urn:x}Decoy", ID=a.get("ID"))
    decoy.text = "x"


async def test_signature_wrapping_refused(dmp_config, signer, pki, simulator, make_submission):
    async with Tampering(dmp_config, signer, client_context(pki), tamper=wrap_vihf_id) as c:
        with pytest.raises(DmpPermanentError) as e:
            await c.publish(make_submission())
    assert e.value.code == "InvalidSecurity" and "not unique" in e.value.text
