"""Building XML-DSig signatures whose SignatureValue is made by a :class:`Signer` (on the token).

lxml does the canonical forms (exclusive and inclusive C14N); this module only lays out the
``ds:`` elements. No Python library signs XML with a PKCS#11 key without owning the key, which is
why the layout is written here and the verification (in the simulator and the tests) uses xmlsec.
"""

from __future__ import annotations

import base64
from typing import Literal

from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from .signer import DIGEST_ALGORITHMS, DS, SIGNATURE_ALGORITHMS, Digest, Signer

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_WITH_COMMENTS = C14N + "#WithComments"
ENVELOPED = DS + "enveloped-signature"

Canon = Literal["exclusive", "inclusive", "inclusive-with-comments"]
CANON_URI: dict[str, str] = {
    "exclusive": EXC_C14N,
    "inclusive": C14N,
    "inclusive-with-comments": C14N_WITH_COMMENTS,
}


def ds(tag: str) -> str:
    return f"{{{DS}}}{tag}"


def canonical(el: etree._Element, canon: str = "exclusive") -> bytes:
    """``el`` (in its tree) in the canonical form named ``canon``."""
    return bytes(etree.tostring(
        el, method="c14n",
        exclusive=(canon == "exclusive"),
        with_comments=(canon == "inclusive-with-comments"),
    ))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def digest(name: str) -> Digest:
    try:
        return DIGEST_ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown digest algorithm {name!r} (expected one of "
                         f"{', '.join(DIGEST_ALGORITHMS)})") from None


def signed_info(signature: etree._Element, signer: Signer, canon: str) -> etree._Element:
    """A ``ds:SignedInfo`` child of ``signature`` with its methods filled in."""
    si = etree.SubElement(signature, ds("SignedInfo"))
    etree.SubElement(si, ds("CanonicalizationMethod"), Algorithm=CANON_URI[canon])
    etree.SubElement(si, ds("SignatureMethod"),
                     Algorithm=SIGNATURE_ALGORITHMS[signer.algorithm].signature_uri)
    return si


def add_reference(parent: etree._Element, uri: str, dig: Digest, value: bytes,
                  transforms: tuple[str, ...] = (), type_: str | None = None) -> etree._Element:
    attrs = {"URI": uri}
    if type_:
        attrs["Type"] = type_
    ref = etree.SubElement(parent, ds("Reference"), attrs)
    if transforms:
        tr = etree.SubElement(ref, ds("Transforms"))
        for t in transforms:
            etree.SubElement(tr, ds("Transform"), Algorithm=t)
    etree.SubElement(ref, ds("DigestMethod"), Algorithm=dig.uri)
    etree.SubElement(ref, ds("DigestValue")).text = b64(value)
    return ref


def sign_and_finish(signature: etree._Element, si: etree._Element, signer: Signer, canon: str,
                    *, value_id: str | None = None) -> None:
    """Sign the canonical SignedInfo on the token; add SignatureValue and the KeyInfo certificate.

    ``si`` must already sit at its final place in the final document: inclusive C14N depends on
    the namespaces in scope.
    """
    value = signer.sign(canonical(si, canon))
    sv = etree.Element(ds("SignatureValue"), {"Id": value_id} if value_id else {})
    sv.text = b64(value)
    si.addnext(sv)
    ki = etree.Element(ds("KeyInfo"))
    xd = etree.SubElement(ki, ds("X509Data"))
    etree.SubElement(xd, ds("X509Certificate")).text = b64(
        signer.certificate.public_bytes(Encoding.DER))
    sv.addnext(ki)
