"""Build and sign a ``ListeBlancheDRIM-M`` the way the ANS does (for tests).

The signature has the layout of the ANS file: enveloped XAdES-BASELINE-B, RSA-SHA256 (or another
method for negative tests), exclusive c14n, one reference ``URI=""`` with the XPath Filter 2.0
subtract of ``/descendant::ds:Signature``, one reference to the XAdES SignedProperties
(SigningTime, SigningCertificateV2 with a SHA-512 digest), KeyInfo with the signer and its chain.
The template is written with lxml; python-xmlsec computes the digests and the signature value.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from appliance.trust.whitelist import (
    DS,
    DSIG_FILTER2,
    EXC_C14N,
    NS,
    SIGNED_PROPERTIES_TYPE,
    XADES,
    Domain,
)

from .pki import Signer

METHODS = {
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
}
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"


def _z(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_list(domains: Iterable[Domain], generated: dt.datetime) -> etree._Element:
    root = etree.Element(f"{{{NS}}}ListeBlancheDRIM-M", nsmap={None: NS})
    root.set("versionFormat", "1.0.0")
    root.text = "\n    "
    etree.SubElement(root, f"{{{NS}}}DateDeGeneration").text = _z(generated)
    listing = etree.SubElement(root, f"{{{NS}}}ListeDomaines")
    for d in domains:
        el = etree.SubElement(listing, f"{{{NS}}}Domaine")
        for tag, value in (("Identifiant", d.identifier), ("db", d.db), ("vi", d.vi),
                           ("Denomination", d.denomination),
                           ("DNCertificatOperateur", d.operator_dn),
                           ("SupportContact", d.support_contact),
                           ("DateMAJ", _z(d.updated) if d.updated else "")):
            etree.SubElement(el, f"{{{NS}}}{tag}").text = value
    return root


def _sub(parent: etree._Element, ns: str, tag: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{tag}", **attrs)
    if text is not None:
        el.text = text
    return el


def sign(root: etree._Element, signer: Signer, *, method: str = "rsa-sha256",
         signing_time: dt.datetime | None = None) -> bytes:
    """``root`` with an enveloped XAdES-BASELINE-B signature appended, serialised."""
    ident = secrets.token_hex(16)
    sid, pid, rid = f"id-{ident}", f"xades-id-{ident}", f"r-id-{ident}-1"
    sig = etree.SubElement(root, f"{{{DS}}}Signature", nsmap={"ds": DS}, Id=sid)
    si = _sub(sig, DS, "SignedInfo")
    _sub(si, DS, "CanonicalizationMethod", Algorithm=EXC_C14N)
    _sub(si, DS, "SignatureMethod", Algorithm=METHODS[method])
    ref = _sub(si, DS, "Reference", Id=rid, URI="")
    trs = _sub(ref, DS, "Transforms")
    tr = _sub(trs, DS, "Transform", Algorithm=DSIG_FILTER2)
    xp = etree.SubElement(tr, f"{{{DSIG_FILTER2}}}XPath", nsmap={"dsig-filter2": DSIG_FILTER2},
                          Filter="subtract")
    xp.text = "/descendant::ds:Signature"
    _sub(trs, DS, "Transform", Algorithm=EXC_C14N)
    _sub(ref, DS, "DigestMethod", Algorithm=SHA256)
    _sub(ref, DS, "DigestValue")
    pref = _sub(si, DS, "Reference", Type=SIGNED_PROPERTIES_TYPE, URI=f"#{pid}")
    _sub(_sub(pref, DS, "Transforms"), DS, "Transform", Algorithm=EXC_C14N)
    _sub(pref, DS, "DigestMethod", Algorithm=SHA256)
    _sub(pref, DS, "DigestValue")
    _sub(sig, DS, "SignatureValue", Id=f"value-{sid}")
    x509data = _sub(_sub(sig, DS, "KeyInfo"), DS, "X509Data")
    for c in signer.chain:
        _sub(x509data, DS, "X509Certificate",
             base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode())
    obj = _sub(sig, DS, "Object")
    qp = etree.SubElement(obj, f"{{{XADES}}}QualifyingProperties", nsmap={"xades": XADES},
                          Target=f"#{sid}")
    sp = _sub(qp, XADES, "SignedProperties", Id=pid)
    ssp = _sub(sp, XADES, "SignedSignatureProperties")
    _sub(ssp, XADES, "SigningTime", _z(signing_time or dt.datetime.now(dt.UTC)))
    cd = _sub(_sub(_sub(ssp, XADES, "SigningCertificateV2"), XADES, "Cert"), XADES, "CertDigest")
    _sub(cd, DS, "DigestMethod", Algorithm=SHA512)
    _sub(cd, DS, "DigestValue", base64.b64encode(hashlib.sha512(
        signer.cert.public_bytes(serialization.Encoding.DER)).digest()).decode())
    dof = _sub(_sub(sp, XADES, "SignedDataObjectProperties"), XADES, "DataObjectFormat",
               ObjectReference=f"#{rid}")
    _sub(dof, XADES, "MimeType", "text/xml")
    root[-1].tail = None
    xmlsec.tree.add_ids(sp, ["Id"])
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), xmlsec.constants.KeyDataFormatPem)
    ctx.sign(sig)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def signed_list(domains: Iterable[Domain], signer: Signer, *,
                generated: dt.datetime | None = None, method: str = "rsa-sha256") -> bytes:
    return sign(build_list(domains, generated or dt.datetime.now(dt.UTC)), signer, method=method)


def domain_for_certificate(cert_pem_path: str | Path, identifier: str, db_host: str,
                           vi_host: str = "") -> Domain:
    """A Domaine entry for the box holding this certificate (DN in RFC 4514 order, CN first,
    as the ANS list writes it)."""
    cert = x509.load_pem_x509_certificate(Path(cert_pem_path).read_bytes())
    return Domain(identifier=str(identifier), db=db_host, vi=vi_host,
                  denomination=f"Test operator {identifier}", operator_dn=cert.subject
                  .rfc4514_string(), support_contact="support@example.invalid",
                  updated=dt.datetime.now(dt.UTC).replace(microsecond=0))
