"""The national whitelist of DRIM-M boxes (ANS ``ListeBlancheDRIM-M``): verify, then read.

A list is used only after :func:`verify` has checked, in this order: the XML is safe
(``appliance.xmlsafe``), the root is the expected element, there is exactly one ``ds:Signature``
(a direct child of the root) of the exact ANS shape (enveloped XAdES-BASELINE-B: one reference
``URI=""`` with the XPath Filter 2.0 subtract of ``/descendant::ds:Signature`` and exc-c14n, one
reference to the XAdES ``SignedProperties``, RSA-SHA256 or stronger), the signer certificate
is the one the signed ``SigningCertificateV2`` names, the signature verifies (xmlsec), the signer
chains to the anchors, is valid, has the configured CN and OU and may sign, is not revoked, and
the content is sane and not older than the list in use. Any failure raises
:class:`WhitelistRefused` with the reason.

Against signature wrapping: the signed content is the whole document minus ``ds:Signature``
elements, and the document may hold only one, so everything read here (the root's children other
than the signature) is covered; comments (not covered by ``URI=""``) are refused; values are
read from the tree xmlsec verified.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, ObjectIdentifier
from lxml import etree

from appliance import xmlsafe
from appliance.keys import certs
from appliance.keys.errors import CertificateRefused

from .crl import CrlSource, CrlUnavailable, Revoked

NS = "https://github.com/ansforge/DRIM-M_DATA"
DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
DSIG_FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
ROOT = f"{{{NS}}}ListeBlancheDRIM-M"
FORMAT_VERSION = "1.0.0"
MAX_LIST_BYTES = 16 * 1024 * 1024
FUTURE_TOLERANCE = dt.timedelta(minutes=10)

SIGNATURE_METHODS = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
}
WEAK_SIGNATURE_METHODS = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": "rsa-sha1",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-md5": "rsa-md5",
}
DIGESTS = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashlib.sha384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashlib.sha512,
}

Revocation = Literal["require", "best-effort", "off"]


class WhitelistRefused(Exception):
    """The list is not used; ``str(e)`` says why in words an operator understands."""

    @property
    def reason(self) -> str:
        return str(self)


# ---------------------------------------------------------------- distinguished names

_ATTR_OIDS: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME, "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME, "S": NameOID.STATE_OR_PROVINCE_NAME,
    "STREET": NameOID.STREET_ADDRESS, "DC": NameOID.DOMAIN_COMPONENT, "UID": NameOID.USER_ID,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER, "E": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "GIVENNAME": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME, "T": NameOID.TITLE, "TITLE": NameOID.TITLE,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}
_OID_DOTTED = re.compile(r"(?:OID\.)?([0-2](?:\.\d+)+)$", re.I)


def _norm_value(v: str) -> str:
    return " ".join(unicodedata.normalize("NFC", v).split()).casefold()


def _split_unescaped(s: str, seps: str) -> list[tuple[str, str]]:
    """Split ``s`` at unescaped characters of ``seps``: [(piece, separator that ended it)]."""
    out: list[tuple[str, str]] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if ch in seps:
            out.append(("".join(cur), ch))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append(("".join(cur), ""))
    return out


def _unescape(v: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(v):
        ch = v[i]
        if ch == "\\" and i + 1 < len(v):
            pair = v[i + 1:i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                raw.append(int(pair, 16))
                i += 3
                continue
            raw.extend(v[i + 1].encode())
            i += 2
            continue
        raw.extend(ch.encode())
        i += 1
    return raw.decode("utf-8", errors="strict")


def parse_dn(text: str) -> tuple[tuple[str, str], ...]:
    """The normalised RDN multiset of an RFC 4514 string; ``ValueError`` if it is not one."""
    atoms: list[tuple[str, str]] = []
    for piece, _sep in _split_unescaped(text.strip(), ",+;"):
        if not piece.strip():
            raise ValueError("empty RDN")
        if "=" not in piece:
            raise ValueError(f"no '=' in {piece!r}")
        typ, _, val = piece.partition("=")
        typ = typ.strip()
        oid = _ATTR_OIDS.get(typ.upper())
        if oid is None:
            m = _OID_DOTTED.match(typ)
            if not m:
                raise ValueError(f"unknown attribute type {typ!r}")
            oid = ObjectIdentifier(m.group(1))
        val = val.strip()
        if val.startswith("#"):
            raise ValueError("hex-encoded attribute values are not supported")
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        try:
            atoms.append((oid.dotted_string, _norm_value(_unescape(val))))
        except UnicodeDecodeError:
            raise ValueError("bad escape in attribute value") from None
    return tuple(sorted(atoms))


def name_key(name: x509.Name) -> tuple[tuple[str, str], ...]:
    """The normalised RDN multiset of a certificate name (order-insensitive)."""
    atoms = []
    for attr in name:
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        atoms.append((attr.oid.dotted_string, _norm_value(value)))
    return tuple(sorted(atoms))


# ---------------------------------------------------------------- the list


@dataclass(frozen=True)
class Domain:
    identifier: str
    db: str
    vi: str
    denomination: str
    operator_dn: str  # as written in the list (RFC 4514 order, CN first)
    support_contact: str
    updated: dt.datetime | None

    @property
    def operator_key(self) -> tuple[tuple[str, str], ...]:
        return parse_dn(self.operator_dn)


@dataclass(frozen=True)
class Whitelist:
    generated: dt.datetime
    domains: tuple[Domain, ...]
    signer_subject: str
    sha256: str
    revocation: str = "not checked"  # what the revocation check found, for operators
    _by_subject: dict[tuple[tuple[str, str], ...], Domain] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for d in self.domains:  # first entry wins, like a scan in list order
            self._by_subject.setdefault(d.operator_key, d)

    def domain_for_subject(self, name: x509.Name) -> Domain | None:
        """The domain whose operator certificate has this subject (DNs compared normalised)."""
        return self._by_subject.get(name_key(name))

    @property
    def db_hosts(self) -> frozenset[str]:
        return frozenset(d.db.lower() for d in self.domains if d.db)

    @property
    def vi_hosts(self) -> frozenset[str]:
        return frozenset(d.vi.lower() for d in self.domains if d.vi)

    def summary(self) -> str:
        return (f"generated: {self.generated:%Y-%m-%dT%H:%M:%SZ}\n"
                f"domains: {len(self.domains)}\n"
                f"signer: {self.signer_subject}\n"
                f"revocation: {self.revocation}\n"
                f"sha256: {self.sha256}")


# ---------------------------------------------------------------- helpers


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _text(el: etree._Element) -> str:
    """The text of an element with no element children (values are simple content)."""
    if _children(el):
        raise WhitelistRefused(f"element {etree.QName(el).localname} must hold text only")
    return (el.text or "").strip()


def _parse_time(value: str, what: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise WhitelistRefused(f"{what} {value!r} is not a date and time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC)


def _one(parent: etree._Element, ns: str, tag: str, where: str) -> etree._Element:
    found = [c for c in parent if c.tag == _q(ns, tag)]
    if len(found) != 1:
        raise WhitelistRefused(f"{where} must hold exactly one {tag} (found {len(found)})")
    return found[0]


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise WhitelistRefused(f"{what} is not base64") from None


# ---------------------------------------------------------------- signature shape


def _check_signature_shape(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    """The one ds:Signature and its xades:SignedProperties, refused unless of the ANS shape."""
    sigs = list(root.iter(_q(DS, "Signature")))
    if not sigs:
        raise WhitelistRefused("not signed (no ds:Signature): the list is corrupt")
    if len(sigs) != 1:
        raise WhitelistRefused(f"the list holds {len(sigs)} ds:Signature elements; exactly one "
                               "is allowed (signature wrapping attempt?)")
    sig = sigs[0]
    if sig.getparent() is not root:
        raise WhitelistRefused("the ds:Signature is not a direct child of the list's root "
                               "(signature wrapping attempt?)")
    si = _one(sig, DS, "SignedInfo", "ds:Signature")
    c14n = _one(si, DS, "CanonicalizationMethod", "ds:SignedInfo").get("Algorithm")
    if c14n != EXC_C14N:
        raise WhitelistRefused(f"canonicalisation {c14n} is not exclusive c14n")
    method = _one(si, DS, "SignatureMethod", "ds:SignedInfo").get("Algorithm") or ""
    if method in WEAK_SIGNATURE_METHODS:
        raise WhitelistRefused(f"signature method {WEAK_SIGNATURE_METHODS[method]} is too weak "
                               "(rsa-sha256 required)")
    if method not in SIGNATURE_METHODS:
        raise WhitelistRefused(f"signature method {method!r} is not accepted (rsa-sha256 "
                               "required)")
    refs = [c for c in si if c.tag == _q(DS, "Reference")]
    if len(refs) != 2:
        raise WhitelistRefused(f"the signature has {len(refs)} references; the ANS list has "
                               "exactly two (the document and the XAdES SignedProperties)")
    doc_refs = [r for r in refs if r.get("URI") == ""]
    prop_refs = [r for r in refs if r.get("Type") == SIGNED_PROPERTIES_TYPE]
    if len(doc_refs) != 1 or len(prop_refs) != 1 or doc_refs[0] is prop_refs[0]:
        raise WhitelistRefused("the signature must reference the whole document (URI=\"\") and "
                               "the XAdES SignedProperties")
    doc_ref, prop_ref = doc_refs[0], prop_refs[0]
    if doc_ref.get("Type") not in (None, "", "http://www.w3.org/2000/09/xmldsig#Object"):
        raise WhitelistRefused("the document reference has an unexpected Type")
    for ref in refs:
        alg = _one(ref, DS, "DigestMethod", "ds:Reference").get("Algorithm")
        if alg not in DIGESTS:
            raise WhitelistRefused(f"digest method {alg!r} is not accepted (sha256 or stronger)")
    # The document reference: XPath Filter 2.0 subtract /descendant::ds:Signature, then exc-c14n.
    tr = [t for t in _one(doc_ref, DS, "Transforms", "the document reference")
          if isinstance(t.tag, str)]
    algs = [t.get("Algorithm") for t in tr]
    if algs != [DSIG_FILTER2, EXC_C14N]:
        raise WhitelistRefused("the document reference's transforms are not XPath Filter 2.0 "
                               f"then exclusive c14n ({', '.join(str(a) for a in algs)})")
    xps = _children(tr[0])
    if (len(xps) != 1 or xps[0].tag != _q(DSIG_FILTER2, "XPath")
            or xps[0].get("Filter") != "subtract"
            or (xps[0].text or "").strip() != "/descendant::ds:Signature"
            or xps[0].nsmap.get("ds") != DS):
        raise WhitelistRefused("the document reference must subtract exactly "
                               "/descendant::ds:Signature (XPath Filter 2.0)")
    # The SignedProperties reference: by Id, inside this signature's QualifyingProperties.
    uri = prop_ref.get("URI") or ""
    if not uri.startswith("#") or len(uri) < 2:
        raise WhitelistRefused("the SignedProperties reference is not a same-document #Id")
    ptr = [t.get("Algorithm") for t in _children(_one(prop_ref, DS, "Transforms",
                                                        "the SignedProperties reference"))]
    if ptr != [EXC_C14N]:
        raise WhitelistRefused("the SignedProperties reference must use exclusive c14n only")
    target = uri[1:]
    with_id = [el for el in root.iter() if isinstance(el.tag, str) and el.get("Id") == target]
    if len(with_id) != 1:
        raise WhitelistRefused(f"Id {target!r} is carried by {len(with_id)} elements; exactly "
                               "one is allowed (signature wrapping attempt?)")
    props = with_id[0]
    qp = props.getparent()
    if (props.tag != _q(XADES, "SignedProperties") or qp is None
            or qp.tag != _q(XADES, "QualifyingProperties") or qp.getparent() is None
            or qp.getparent().tag != _q(DS, "Object") or qp.getparent().getparent() is not sig):
        raise WhitelistRefused("the SignedProperties reference does not point at this "
                               "signature's xades:SignedProperties")
    return sig, props


def _key_info_certs(sig: etree._Element) -> list[x509.Certificate]:
    ki = _one(sig, DS, "KeyInfo", "ds:Signature")
    out = []
    for el in ki.iter(_q(DS, "X509Certificate")):
        try:
            c = x509.load_der_x509_certificate(_b64(el.text, "ds:X509Certificate"))
            # cryptography parses lazily: touch what the checks read, so a damaged
            # certificate is refused here and not half-way through the chain check.
            _ = (c.subject.rfc4514_string(), c.issuer.rfc4514_string(), c.not_valid_after_utc,
                 c.not_valid_before_utc, list(c.extensions), c.public_key())
            out.append(c)
        except ValueError:
            raise WhitelistRefused("a ds:X509Certificate of KeyInfo is not a certificate") \
                from None
    if not out:
        raise WhitelistRefused("the signature's KeyInfo carries no certificate")
    return out


def _signing_certificate(props: etree._Element,
                         candidates: Sequence[x509.Certificate]) -> x509.Certificate:
    """The KeyInfo certificate whose digest the signed SigningCertificate(V2) carries."""
    ssp = _one(props, XADES, "SignedSignatureProperties", "xades:SignedProperties")
    sc = [c for c in ssp if c.tag in (_q(XADES, "SigningCertificateV2"),
                                      _q(XADES, "SigningCertificate"))]
    if len(sc) != 1:
        raise WhitelistRefused("the XAdES SignedProperties must name the signer certificate "
                               "(SigningCertificateV2) exactly once")
    cert_els = [c for c in sc[0] if c.tag == _q(XADES, "Cert")]
    if not cert_els:
        raise WhitelistRefused("SigningCertificateV2 holds no xades:Cert")
    for cert_el in cert_els:
        cd = _one(cert_el, XADES, "CertDigest", "xades:Cert")
        alg = _one(cd, DS, "DigestMethod", "xades:CertDigest").get("Algorithm")
        if alg not in DIGESTS:
            raise WhitelistRefused(f"signing certificate digest {alg!r} is not accepted")
        want = _b64(_one(cd, DS, "DigestValue", "xades:CertDigest").text,
                    "the signing certificate digest")
        for c in candidates:
            if DIGESTS[alg](c.public_bytes(Encoding.DER)).digest() == want:
                return c
    raise WhitelistRefused("no KeyInfo certificate matches the signed SigningCertificateV2 "
                           "digest")


def _xmlsec_verify(root: etree._Element, sig: etree._Element, cert: x509.Certificate) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and el.get("Id") is not None:
            xmlsec.tree.add_ids(el, ["Id"])
    ctx = xmlsec.SignatureContext()
    try:
        ctx.key = xmlsec.Key.from_memory(cert.public_bytes(Encoding.PEM),
                                         xmlsec.constants.KeyDataFormatCertPem)
        ctx.verify(sig)
    except xmlsec.Error:
        raise WhitelistRefused("signature does not verify (the list was altered or is not "
                               "signed by this certificate)") from None


# ---------------------------------------------------------------- signer checks


def _check_signer(signer: x509.Certificate, others: Sequence[x509.Certificate],
                  anchors: Sequence[x509.Certificate], signer_cn: str, signer_ou: str,
                  at: dt.datetime) -> list[x509.Certificate]:
    subject = certs.describe(signer)
    if at > signer.not_valid_after_utc:
        raise WhitelistRefused(f"signer certificate expired on "
                               f"{signer.not_valid_after_utc:%Y-%m-%d %H:%M}Z ({subject})")
    if at < signer.not_valid_before_utc:
        raise WhitelistRefused(f"signer certificate is not valid before "
                               f"{signer.not_valid_before_utc:%Y-%m-%d %H:%M}Z ({subject})")
    cns = [str(a.value) for a in signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [signer_cn]:
        raise WhitelistRefused(f"signer CN {', '.join(repr(c) for c in cns) or 'none'} is not "
                               f"the configured {signer_cn!r}")
    ous = [str(a.value) for a in
           signer.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if ous != [signer_ou]:
        raise WhitelistRefused(f"signer OU {', '.join(repr(o) for o in ous) or 'none'} is not "
                               f"the configured {signer_ou!r}")
    try:
        ku = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise WhitelistRefused(f"signer certificate {subject} has no KeyUsage") from None
    if not (ku.digital_signature or ku.content_commitment):
        raise WhitelistRefused(f"signer certificate {subject} may not sign (KeyUsage lacks "
                               "digitalSignature and nonRepudiation)")
    # The anchors are the configured ones only: a self-signed certificate in KeyInfo is not one.
    inters = [c for c in others if c.subject != c.issuer]
    try:
        return certs.validate_chain(signer, list(anchors) + inters, at)
    except CertificateRefused as e:
        raise WhitelistRefused(f"signer certificate not trusted: {e}") from None


def _check_revocation(chain: Sequence[x509.Certificate], mode: Revocation,
                      crls: CrlSource | None, at: dt.datetime) -> str:
    if mode == "off":
        return "not checked (revocation off)"
    unavailable: list[str] = []
    checked = 0
    for cert, issuer in zip(chain[:-1], chain[1:], strict=False):
        if crls is None:
            unavailable.append("no CRL source")
            break
        try:
            crls.check(cert, issuer, at)
            checked += 1
        except Revoked as e:
            who = ("the signer certificate" if cert is chain[0]
                   else f"the signer's CA certificate {e.subject}")
            raise WhitelistRefused(f"CRL {e.where} lists {who} as revoked (since "
                                   f"{e.since:%Y-%m-%d %H:%M}Z)") from None
        except CrlUnavailable as e:
            unavailable.append(str(e))
    if unavailable:
        if mode == "require":
            msg = "; ".join(unavailable)
            raise WhitelistRefused(msg if "unreachable" in msg else f"CRL unreachable: {msg}")
        return f"not checked ({'; '.join(unavailable)})"
    return f"checked ({checked} CRL{'s' if checked != 1 else ''}, not revoked)"


# ---------------------------------------------------------------- content


def _read_domains(listing: etree._Element) -> tuple[Domain, ...]:
    domains: list[Domain] = []
    seen: set[str] = set()
    for n, d in enumerate(_children(listing), 1):
        if d.tag != _q(NS, "Domaine"):
            raise WhitelistRefused(f"unexpected element {etree.QName(d).localname} in "
                                   "ListeDomaines")
        fields: dict[str, str] = {}
        for c in _children(d):
            q = etree.QName(c)
            if q.namespace != NS:
                raise WhitelistRefused(f"domain #{n}: element {q.localname} outside the list "
                                       "namespace")
            if q.localname in fields:
                raise WhitelistRefused(f"domain #{n}: {q.localname} appears twice")
            fields[q.localname] = _text(c)
        ident = fields.get("Identifiant", "")
        where = f"domain {ident!r}" if ident else f"domain #{n}"
        if not ident:
            raise WhitelistRefused(f"{where} has no Identifiant")
        if ident in seen:
            raise WhitelistRefused(f"duplicate Identifiant {ident!r}")
        seen.add(ident)
        if not fields.get("db"):
            raise WhitelistRefused(f"{where} has no db host")
        dn = fields.get("DNCertificatOperateur", "")
        if not dn:
            raise WhitelistRefused(f"{where} has no DNCertificatOperateur")
        try:
            parse_dn(dn)
        except ValueError as e:
            raise WhitelistRefused(f"{where}: DNCertificatOperateur {dn!r} is not a "
                                   f"distinguished name ({e})") from None
        updated = (_parse_time(fields["DateMAJ"], f"{where}: DateMAJ")
                   if fields.get("DateMAJ") else None)
        domains.append(Domain(ident, fields["db"], fields.get("vi", ""),
                              fields.get("Denomination", ""), dn,
                              fields.get("SupportContact", ""), updated))
    if not domains:
        raise WhitelistRefused("the list holds no domain")
    return tuple(domains)


def _read_content(root: etree._Element, sig: etree._Element) -> tuple[dt.datetime,
                                                                     tuple[Domain, ...]]:
    if root.get("versionFormat") != FORMAT_VERSION:
        raise WhitelistRefused(f"versionFormat {root.get('versionFormat')!r} is not "
                               f"{FORMAT_VERSION}")
    content = [c for c in _children(root) if c is not sig]
    tags = [c.tag for c in content]
    if tags != [_q(NS, "DateDeGeneration"), _q(NS, "ListeDomaines")]:
        names = ", ".join(etree.QName(t).localname for t in tags)
        raise WhitelistRefused(f"the list must hold DateDeGeneration then ListeDomaines "
                               f"(found: {names or 'nothing'})")
    generated = _parse_time(_text(content[0]), "DateDeGeneration")
    return generated, _read_domains(content[1])


# ---------------------------------------------------------------- entry point


def verify(data: bytes, anchors: Sequence[x509.Certificate], *,
           signer_cn: str = "Liste Blanche DRIM-M", signer_ou: str = "318751275100020",
           revocation: Revocation = "require", crls: CrlSource | None = None,
           current: Whitelist | None = None, at: dt.datetime | None = None) -> Whitelist:
    """The verified list in ``data``, or :class:`WhitelistRefused` with the reason."""
    if revocation not in ("require", "best-effort", "off"):
        raise ValueError(f"revocation must be require, best-effort or off, not {revocation!r}")
    try:
        return _verify(data, anchors, signer_cn=signer_cn, signer_ou=signer_ou,
                       revocation=revocation, crls=crls, current=current, at=at)
    except WhitelistRefused:
        raise
    except (ValueError, TypeError, etree.LxmlError, xmlsec.Error) as e:
        # Odd bytes that reached a library call unchecked: still a refusal, never a crash.
        raise WhitelistRefused(f"malformed list or certificate ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None


def _verify(data: bytes, anchors: Sequence[x509.Certificate], *, signer_cn: str,
            signer_ou: str, revocation: Revocation, crls: CrlSource | None,
            current: Whitelist | None, at: dt.datetime | None) -> Whitelist:
    at = at or dt.datetime.now(dt.UTC)
    if not anchors:
        raise WhitelistRefused("no trust anchor configured for the whitelist signer")
    try:
        root = xmlsafe.parse(data, limit=MAX_LIST_BYTES)
    except xmlsafe.UnsafeXmlError as e:
        raise WhitelistRefused(f"not a usable XML document: {e}") from None
    except Exception as e:  # lxml can raise odd errors on odd bytes; all mean "corrupt"
        raise WhitelistRefused(f"not a usable XML document: {type(e).__name__}") from None
    if root.tag != ROOT:
        raise WhitelistRefused(f"the root element is {root.tag!r}, not ListeBlancheDRIM-M")
    tree = root.getroottree()
    for node in tree.iter(etree.Comment, etree.ProcessingInstruction, etree.Entity):
        if node.getparent() is not None:
            raise WhitelistRefused("the list carries comments or processing instructions inside "
                                   "its content (not covered by the signature)")
    sig, props = _check_signature_shape(root)
    key_certs = _key_info_certs(sig)
    signer = _signing_certificate(props, key_certs)
    _xmlsec_verify(root, sig, signer)
    chain = _check_signer(signer, [c for c in key_certs if c is not signer], anchors,
                          signer_cn, signer_ou, at)
    # Content is read from the very tree xmlsec verified, after the signature checks.
    generated, domains = _read_content(root, sig)
    if generated > at + FUTURE_TOLERANCE:
        raise WhitelistRefused(f"list generated {generated:%Y-%m-%dT%H:%M:%SZ} is in the future")
    if current is not None and generated < current.generated:
        raise WhitelistRefused(f"list generated {generated:%Y-%m-%dT%H:%M:%SZ} is older than the "
                               f"current list ({current.generated:%Y-%m-%dT%H:%M:%SZ})")
    status = _check_revocation(chain, revocation, crls, at)
    return Whitelist(generated, domains, certs.describe(signer),
                     hashlib.sha256(data).hexdigest(), status)
