"""The IHE DSG detached signature over a submission: XML-DSig + XAdES 1.1.1 (PROTOCOLS.md §2.4).

``ds:Manifest`` lists the submission set (``urn:oid:<uniqueId>``, digest ``AA==`` as in the ANS
sample: a submission set has no bytes) and each document by its uniqueId with the digest of its
bytes. SignedInfo references the manifest and the XAdES SignedProperties. Signed on the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from . import xmldsig
from .codes import EVENT_SIGNATURE_SOURCE, NS
from .signer import Signer

XADES = NS["xades"]
MANIFEST_TYPE = NS["ds"] + "Manifest"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903/v1.1.1#SignedProperties"
MANIFEST_ID = "IHEManifest"
PROPS_ID = "S0-SignedProperties"


@dataclass(frozen=True)
class SignedDocument:
    unique_id: str
    content: bytes


def _x(tag: str) -> str:
    return f"{{{XADES}}}{tag}"


def _issuer_name(cert_issuer: object) -> str:
    return str(cert_issuer.rfc4514_string())  # type: ignore[attr-defined]


def build(signature_uid: str, submission_set_uid: str, documents: list[SignedDocument],
          signer: Signer, *, digest: str = "sha256", canon: str = "inclusive-with-comments",
          now: datetime | None = None) -> bytes:
    """The signature document (UTF-8 XML bytes) whose ``Signature/@Id`` is ``signature_uid``."""
    dig = xmldsig.digest(digest)
    now = now or datetime.now(UTC)
    sig = etree.Element(xmldsig.ds("Signature"), Id=signature_uid, nsmap={"ds": NS["ds"]})
    si = xmldsig.signed_info(sig, signer, canon)

    # Objects first, so their canonical form is taken at their final place.
    obj = etree.SubElement(sig, xmldsig.ds("Object"))
    qp = etree.SubElement(obj, _x("QualifyingProperties"), Target="#" + signature_uid,
                          nsmap={"xades": XADES})
    sp = etree.SubElement(qp, _x("SignedProperties"), Id=PROPS_ID)
    ssp = etree.SubElement(sp, _x("SignedSignatureProperties"))
    etree.SubElement(ssp, _x("SigningTime")).text = now.astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    cert = signer.certificate
    c = etree.SubElement(etree.SubElement(ssp, _x("SigningCertificate")), _x("Cert"))
    cd = etree.SubElement(c, _x("CertDigest"))
    etree.SubElement(cd, xmldsig.ds("DigestMethod"), Algorithm=dig.uri)
    etree.SubElement(cd, xmldsig.ds("DigestValue")).text = xmldsig.b64(
        dig.of(cert.public_bytes(Encoding.DER)))
    iss = etree.SubElement(c, _x("IssuerSerial"))
    etree.SubElement(iss, xmldsig.ds("X509IssuerName")).text = _issuer_name(cert.issuer)
    etree.SubElement(iss, xmldsig.ds("X509SerialNumber")).text = str(cert.serial_number)
    spi = etree.SubElement(ssp, _x("SignaturePolicyIdentifier"))
    etree.SubElement(spi, _x("SignaturePolicyImplied"))

    props = etree.SubElement(etree.SubElement(sig, xmldsig.ds("Object")),
                             xmldsig.ds("SignatureProperties"))
    etree.SubElement(props, xmldsig.ds("SignatureProperty"), Id="purposeOfSignature",
                     Target="#" + signature_uid).text = EVENT_SIGNATURE_SOURCE.code

    manifest = etree.SubElement(etree.SubElement(sig, xmldsig.ds("Object")),
                                xmldsig.ds("Manifest"), Id=MANIFEST_ID)
    xmldsig.add_reference(manifest, "urn:oid:" + submission_set_uid, dig, b"\x00")
    for d in documents:
        xmldsig.add_reference(manifest, "urn:oid:" + d.unique_id, dig, dig.of(d.content))

    # Same-document references, canonicalised explicitly (exclusive C14N) so that their digests
    # do not depend on the namespaces declared around them.
    xmldsig.add_reference(si, "#" + MANIFEST_ID, dig,
                          dig.of(xmldsig.canonical(manifest, "exclusive")),
                          transforms=(xmldsig.EXC_C14N,), type_=MANIFEST_TYPE)
    xmldsig.add_reference(si, "#" + PROPS_ID, dig, dig.of(xmldsig.canonical(sp, "exclusive")),
                          transforms=(xmldsig.EXC_C14N,), type_=SIGNED_PROPERTIES_TYPE)
    xmldsig.sign_and_finish(sig, si, signer, canon, value_id="S0-SignatureValue")
    return bytes(etree.tostring(sig, xml_declaration=True, encoding="UTF-8"))

