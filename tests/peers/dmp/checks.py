"""What the DMP simulator checks, written independently of ``appliance.dmp`` so that a mistake in
the connector is not repeated here. Each failed check raises :class:`Refusal` (answered as an
ebRS RegistryError) or :class:`SecurityFault` (answered as a SOAP Sender fault, like the DMP does
for a VIHF it does not accept).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

NS = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "saml2": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xades": "http://uri.etsi.org/01903/v1.1.1#",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "xds": "urn:ihe:iti:xds-b:2007",
    "xop": "http://www.w3.org/2004/08/xop/include",
    "hl7": "urn:hl7-org:v3",
}
RIM = NS["rim"]


class Refusal(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class SecurityFault(Exception):
    def __init__(self, subcode: str, text: str) -> None:
        super().__init__(text)
        self.subcode = subcode
        self.text = text


def q(prefix: str, tag: str) -> str:
    return f"{{{NS[prefix]}}}{tag}"


# ---------------------------------------------------------------- hardened parsing

def parse_xml(data: bytes, limit: int) -> etree._Element:
    if len(data) > limit:
        raise Refusal("XDSRegistryError", "message too large")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError) as e:
        raise Refusal("XDSRegistryError", f"malformed XML: {e}") from None
    if root.getroottree().docinfo.internalDTD is not None or root.getroottree().docinfo.doctype:
        raise Refusal("XDSRegistryError", "DOCTYPE refused")
    return root


# ---------------------------------------------------------------- certificates & signatures

def subject_dn(cert: x509.Certificate) -> str:
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(cert.subject.rdns))


def ou(cert: x509.Certificate) -> str:
    vals = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(vals[0].value) if vals else ""


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if ca.subject != cert.issuer:
        return False
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore
                               padding.PKCS1v15(), cert.signature_hash_algorithm)
        return True
    except (InvalidSignature, TypeError, ValueError):
        return False


def trusted(cert: x509.Certificate, anchors: list[x509.Certificate], depth: int = 0) -> bool:
    """``cert`` is valid now and chains, through the given CA certificates, to a self-signed one
    of them (the anchors list holds the root and the issuing CAs, as the IGC-Santé bundle does)."""
    now = datetime.now(UTC)
    if depth > 4 or not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        return False
    for ca in anchors:
        if _issued_by(cert, ca):
            if ca.subject == ca.issuer or trusted(ca, anchors, depth + 1):
                return True
    return False


def _key_info_cert(sig: etree._Element) -> x509.Certificate:
    text = sig.findtext("ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=NS)
    try:
        return x509.load_der_x509_certificate(base64.b64decode((text or "").strip(), validate=True))
    except (binascii.Error, ValueError):
        raise SecurityFault("wsse:InvalidSecurityToken", "no readable X509Certificate in KeyInfo"
                            ) from None


class _Resolver:
    """xmlsec IO callbacks that resolve only ``urn:oid:`` URIs of the current submission and
    refuse every other URI (no file://, no http:// reads driven by a signature)."""

    def __init__(self, docs: dict[str, bytes]) -> None:
        self.docs = docs

    def __enter__(self) -> Self:
        xmlsec.cleanup_callbacks()
        xmlsec.register_callbacks(lambda name: True, self._open,
                                  lambda f, buf: f.readinto(buf), lambda f: None)
        return self

    def __exit__(self, *exc: object) -> None:
        xmlsec.cleanup_callbacks()
        xmlsec.register_default_callbacks()

    def _open(self, name: bytes) -> io.BytesIO:
        uri = name.decode("utf-8", "replace")
        if uri in self.docs:
            return io.BytesIO(self.docs[uri])
        raise ValueError(f"reference to {uri!r} refused")


def verify_signature(root: etree._Element, sig: etree._Element, id_attr: str,
                     anchors: list[x509.Certificate], docs: dict[str, bytes] | None = None
                     ) -> x509.Certificate:
    """Verify ``sig`` (xmlsec) with the certificate it carries, and that certificate's chain."""
    cert = _key_info_cert(sig)
    if not trusted(cert, anchors):
        raise SecurityFault("wsse:FailedAuthentication",
                            "signing certificate not issued by a trusted CA or expired")
    for el in root.iter():
        if el.get(id_attr) is not None:
            xmlsec.tree.add_ids(el, [id_attr])
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert.public_bytes(Encoding.PEM),
                                     xmlsec.constants.KeyDataFormatCertPem)
    try:
        with _Resolver(docs or {}):
            ctx.verify(sig)
    except xmlsec.Error:
        raise SecurityFault("wsse:FailedCheck", "signature does not verify") from None
    return cert


# ---------------------------------------------------------------- VIHF

VIHF_REQUIRED = ("VIHF_Version", "Secteur_Activite", "Ressource_URN",
                 "urn:oasis:names:tc:xspa:1.0:subject:subject-id", "Identifiant_Structure",
                 "LPS_ID", "LPS_Nom", "LPS_ID_HOMOLOGATION_DMP", "LPS_Version",
                 "urn:oasis:names:tc:xacml:2.0:resource:resource-id", "Authentification_Mode",
                 "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
                 "urn:oasis:names:tc:xacml:2.0:subject:role")
MODES = {"INDIRECTE", "INDIRECTE_RENFORCEE"}
PATIENT_ID = re.compile(r"\d{5}(?:\d{2}|2A|2B)\d{8}\^\^\^&1\.2\.250\.1\.213\.1\.4\.(?:8|9|10|11)"
                        r"&ISO\^NH")


@dataclass
class Vihf:
    name_id: str
    attributes: dict[str, list[str]]
    roles: list[tuple[str, str]]
    cert: x509.Certificate | None

    @property
    def mode(self) -> str:
        return self.attributes["Authentification_Mode"][0]

    @property
    def patient_id(self) -> str:
        return self.attributes["urn:oasis:names:tc:xacml:2.0:resource:resource-id"][0]

    @property
    def structure(self) -> str:
        return self.attributes["Identifiant_Structure"][0]


def check_vihf(env: etree._Element, anchors: list[x509.Certificate], *,
               verify: bool = True, max_age: timedelta = timedelta(minutes=10)) -> Vihf:
    found = env.findall("soap:Header/wsse:Security/saml2:Assertion", NS)
    if len(found) != 1:
        raise SecurityFault("wsse:InvalidSecurity", "exactly one VIHF assertion is required in "
                            "wsse:Security")
    a = found[0]
    if a.get("Version") != "2.0" or not a.get("ID"):
        raise SecurityFault("wsse:InvalidSecurity", "VIHF is not a SAML 2.0 assertion with an ID")
    sigs = a.findall("ds:Signature", NS)
    if len(sigs) != 1:
        raise SecurityFault("wsse:InvalidSecurity", "VIHF must carry one enveloped signature")
    refs = sigs[0].findall("ds:SignedInfo/ds:Reference", NS)
    if len(refs) != 1 or refs[0].get("URI") != "#" + a.get("ID", ""):
        raise SecurityFault("wsse:InvalidSecurity", "VIHF signature must reference the assertion")
    transforms = [t.get("Algorithm") for t in refs[0].findall("ds:Transforms/ds:Transform", NS)]
    if NS["ds"] + "enveloped-signature" not in transforms:
        raise SecurityFault("wsse:InvalidSecurity", "VIHF signature must be enveloped")
    c14n = sigs[0].find("ds:SignedInfo/ds:CanonicalizationMethod", NS)
    if c14n is None or c14n.get("Algorithm") != "http://www.w3.org/2001/10/xml-exc-c14n#":
        raise SecurityFault("wsse:InvalidSecurity", "VIHF SignedInfo must use exclusive C14N")
    same_id = [el for el in env.iter() if a.get("ID") in (el.get("ID"), el.get("Id"),
                                                        el.get("id"))]
    if len(same_id) != 1:
        # Another element carrying the assertion's ID is the mark of a signature-wrapping attack.
        raise SecurityFault("wsse:InvalidSecurity", "the VIHF ID is not unique in the message")
    cert = None
    if verify:
        cert = verify_signature(a, sigs[0], "ID", anchors)
        issuer = a.findtext("saml2:Issuer", "", NS).strip()
        if issuer != subject_dn(cert):
            raise SecurityFault("wsse:InvalidSecurity", "VIHF Issuer is not the signer's DN")
        try:
            instant = datetime.strptime(a.get("IssueInstant", ""), "%Y-%m-%dT%H:%M:%S.%fZ"
                                        ).replace(tzinfo=UTC)
        except ValueError:
            raise SecurityFault("wsse:InvalidSecurity", "VIHF IssueInstant unreadable") from None
        if abs(datetime.now(UTC) - instant) > max_age:
            raise SecurityFault("wsse:MessageExpired", "VIHF IssueInstant too old or in the future")
    name_id = a.findtext("saml2:Subject/saml2:NameID", "", NS).strip()
    if not name_id:
        raise SecurityFault("wsse:InvalidSecurity", "VIHF without Subject/NameID")
    if a.findtext("saml2:AuthnStatement/saml2:AuthnContext/saml2:AuthnContextClassRef", "",
                  NS).strip() != "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient":
        raise SecurityFault("wsse:InvalidSecurity", "VIHF AuthnContextClassRef must be TLSClient")
    attrs: dict[str, list[str]] = {}
    roles: list[tuple[str, str]] = []
    for at in a.findall("saml2:AttributeStatement/saml2:Attribute", NS):
        name = at.get("Name", "")
        vals = []
        for v in at.findall("saml2:AttributeValue", NS):
            if len(v):
                ce = v[0]
                vals.append(ce.get("code", ""))
                if name.endswith("subject:role"):
                    roles.append((ce.get("code", ""), ce.get("codeSystem", "")))
            else:
                vals.append((v.text or "").strip())
        attrs[name] = vals
    missing = [n for n in VIHF_REQUIRED if not attrs.get(n) or not all(attrs[n])]
    if missing:
        raise SecurityFault("wsse:InvalidSecurity", f"VIHF attributes missing: {', '.join(missing)}")
    if attrs["VIHF_Version"] != ["3.0"]:
        raise SecurityFault("wsse:InvalidSecurity", "VIHF_Version must be 3.0")
    if attrs["Ressource_URN"] != ["urn:dmp"]:
        raise SecurityFault("wsse:InvalidSecurity", "Ressource_URN must be urn:dmp")
    if not re.fullmatch(r"SA\d\d\^1\.2\.250\.1\.71\.4\.2\.4", attrs["Secteur_Activite"][0]):
        raise SecurityFault("wsse:InvalidSecurity", "Secteur_Activite must be SAxx^1.2.250.1.71.4.2.4")
    if attrs["Authentification_Mode"][0] not in MODES:
        raise SecurityFault("wsse:InvalidSecurity", "unknown Authentification_Mode")
    if not PATIENT_ID.fullmatch(attrs["urn:oasis:names:tc:xacml:2.0:resource:resource-id"][0]):
        raise SecurityFault("wsse:InvalidSecurity", "resource-id is not an INS^^^&OID&ISO^NH")
    if attrs["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"] != ["normal"]:
        raise SecurityFault("wsse:InvalidSecurity", "purposeofuse must be normal")
    if not any(system == "1.2.250.1.71.1.2.7" for _, system in roles):
        raise SecurityFault("wsse:InvalidSecurity", "role must carry a profession in "
                            "1.2.250.1.71.1.2.7")
    return Vihf(name_id, attrs, roles, cert)


def check_addressing(env: etree._Element, action: str) -> None:
    h = env.find("soap:Header", NS)
    if h is None:
        raise Refusal("XDSRegistryError", "SOAP Header missing")
    if not (h.findtext("wsa:MessageID", "", NS) or "").strip():
        raise Refusal("XDSRegistryError", "wsa:MessageID missing")
    if not (h.findtext("wsa:To", "", NS) or "").strip():
        raise Refusal("XDSRegistryError", "wsa:To missing")
    act = h.find("wsa:Action", NS)
    if act is None or (act.text or "").strip() != action:
        raise Refusal("XDSRegistryError", f"wsa:Action must be {action}")
    if act.get(q("soap", "mustUnderstand")) not in ("true", "1"):
        raise Refusal("XDSRegistryError", "wsa:Action must be mustUnderstand")


# ---------------------------------------------------------------- metadata

S = {  # classification / identification schemes
    "ss_author": "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d",
    "ss_content": "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500",
    "ss_node": "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
    "ss_patient": "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
    "ss_source": "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
    "ss_unique": "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
    "de_type_obj": "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
    "de_author": "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
    "class": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
    "type": "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
    "conf": "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
    "format": "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
    "facility": "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
    "practice": "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
    "event": "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4",
    "de_patient": "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
    "de_unique": "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
}
# Allowed (code, scheme) per classification, per document kind.
KOS_CODES = {
    "class": {("31", "1.2.250.1.213.1.1.4.1")},
    "type": {("IMG-KOS", "1.2.250.1.213.1.1.4.12")},
    "format": {("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1")},
}
SIG_CODES = {
    "class": {("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN")},
    "type": {("E1762", "ASTM")},
    "format": {("http://www.w3.org/2000/09/xmldsig#", "URN")},
}
CONF = {("N", "2.16.840.1.113883.5.25"), ("R", "2.16.840.1.113883.5.25"),
        ("V", "2.16.840.1.113883.5.25"), ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"),
        ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"),
        ("INVISIBLE_REP_LEGAUX", "1.2.250.1.213.1.1.4.13")}
# Modality (JDV .618), region (JDV .695), CCAM acts (as in the ANS validator sample),
# and the signature's "Source" purpose.
EVENT_SYSTEMS = {"1.2.250.1.213.1.1.5.618", "1.2.250.1.213.1.1.5.695", "1.2.250.1.213.2.5",
                 "1.2.840.10065.1.12"}
XCN = re.compile(r"[^^&|~\\]+\^[^^&|~\\]*\^[^^&|~\\]*(\^[^^&|~\\]*){5}\^&[0-9.]+&ISO\^[A-Z]?"
                 r"\^\^\^[A-Z]+")
XON = re.compile(r"[^^&|~\\]+\^\^\^\^\^&[0-9.]+&ISO\^[A-Z]+\^\^\^[^^&|~\\]+")
DTM = re.compile(r"\d{4}(\d{2}){0,5}([+-]\d{4})?")
OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
REF_ID = re.compile(r"[^^]+\^\^\^&[0-9.]+&ISO\^urn:ihe:iti:xds:(2013:accession|2013:order|"
                    r"2016:studyInstanceUID)")


def slots(el: etree._Element) -> dict[str, list[str]]:
    return {s.get("name", ""): [v.text or "" for v in s.iterfind("rim:ValueList/rim:Value", NS)]
            for s in el.findall("rim:Slot", NS)}


def classifications(el: etree._Element, scheme: str) -> list[etree._Element]:
    return [c for c in el.findall("rim:Classification", NS)
            if c.get("classificationScheme") == scheme]


def coded(c: etree._Element) -> tuple[str, str]:
    cs = slots(c).get("codingScheme", [""])
    return c.get("nodeRepresentation", ""), cs[0] if cs else ""


def external(el: etree._Element, scheme: str) -> str | None:
    for e in el.findall("rim:ExternalIdentifier", NS):
        if e.get("identificationScheme") == scheme:
            return e.get("value")
    return None


def _meta(text: str) -> Refusal:
    return Refusal("XDSRegistryMetadataError", text)


def _check_author(el: etree._Element, scheme: str, what: str) -> etree._Element:
    authors = classifications(el, scheme)
    if not authors:
        raise _meta(f"{what}: author missing")
    s = slots(authors[0])
    if not s.get("authorPerson") or not all(XCN.fullmatch(v) for v in s["authorPerson"]):
        raise _meta(f"{what}: authorPerson missing or not an XCN")
    if not s.get("authorInstitution") or not all(XON.fullmatch(v)
                                                 for v in s["authorInstitution"]):
        raise _meta(f"{what}: authorInstitution missing or not an XON")
    return authors[0]


def author_structure(el: etree._Element, scheme: str) -> str:
    authors = classifications(el, scheme)
    inst = slots(authors[0]).get("authorInstitution", [""]) if authors else [""]
    return inst[0].rsplit("^", 1)[-1]


@dataclass
class Entry:
    """A DocumentEntry as the registry keeps it."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    mime_type: str
    status: str
    xml: bytes                 # the ExtrinsicObject as submitted (symbolic ids rewritten)
    content: bytes
    submission_set_uid: str
    structure: str
    is_signature: bool
    reference_ids: list[str] = field(default_factory=list)
    event_codes: list[tuple[str, str]] = field(default_factory=list)
    class_code: tuple[str, str] = ("", "")
    creation_time: str = ""


@dataclass
class Submission:
    uid: str
    patient_id: str
    documents: list[etree._Element]
    associations: list[etree._Element]
    package: etree._Element


def check_submission_set(rol: etree._Element) -> Submission:
    packages = rol.findall("rim:RegistryPackage", NS)
    if len(packages) != 1:
        raise _meta("exactly one SubmissionSet (RegistryPackage) is required")
    ss = packages[0]
    sid = ss.get("id", "")
    nodes = [c for c in ss.findall("rim:Classification", NS)
             if c.get("classificationNode") == S["ss_node"]]
    if not nodes:
        raise _meta("RegistryPackage is not classified as a SubmissionSet")
    s = slots(ss)
    if not s.get("submissionTime") or not DTM.fullmatch(s["submissionTime"][0]):
        raise _meta("SubmissionSet.submissionTime missing or malformed")
    _check_author(ss, S["ss_author"], "SubmissionSet")
    ct = classifications(ss, S["ss_content"])
    if len(ct) != 1 or not all(coded(ct[0])):
        raise _meta("SubmissionSet.contentTypeCode missing")
    pid = external(ss, S["ss_patient"])
    if pid is None or not PATIENT_ID.fullmatch(pid):
        raise Refusal("XDSRegistryMetadataError",
                      "SubmissionSet.patientId missing or not INS^^^&OID&ISO^NH")
    src = external(ss, S["ss_source"])
    uid = external(ss, S["ss_unique"])
    if not src or not OID.fullmatch(src):
        raise _meta("SubmissionSet.sourceId missing or not an OID")
    if not uid or not OID.fullmatch(uid):
        raise _meta("SubmissionSet.uniqueId missing or not an OID")
    if sid == "":
        raise _meta("SubmissionSet without id")
    return Submission(uid, pid, rol.findall("rim:ExtrinsicObject", NS),
                      rol.findall("rim:Association", NS), ss)


def check_document_entry(eo: etree._Element, patient_id: str, content: bytes | None
                         ) -> bool:
    """Check one DocumentEntry; True when it is the signature document."""
    obj = eo.get("id", "?")
    if eo.get("objectType") != S["de_type_obj"]:
        raise _meta(f"{obj}: objectType must be the stable DocumentEntry type")
    cls = classifications(eo, S["class"])
    if len(cls) != 1:
        raise _meta(f"{obj}: exactly one classCode is required")
    is_sig = coded(cls[0]) in SIG_CODES["class"]
    table = SIG_CODES if is_sig else KOS_CODES
    expected_mime = "text/xml" if is_sig else "application/dicom"
    if eo.get("mimeType") != expected_mime:
        raise _meta(f"{obj}: mimeType must be {expected_mime}")
    for key in ("class", "type", "format"):
        found = classifications(eo, S[key])
        if len(found) != 1 or coded(found[0]) not in table[key]:
            raise _meta(f"{obj}: {key}Code must be one of {sorted(table[key])}")
    conf = classifications(eo, S["conf"])
    if not conf or any(coded(c) not in CONF for c in conf):
        raise _meta(f"{obj}: confidentialityCode missing or not from the DMP code systems")
    for key, system in (("facility", "1.2.250.1.71.4.2.4"), ("practice", "1.2.250.1.213.1.1.4.9")):
        found = classifications(eo, S[key])
        if len(found) != 1 or coded(found[0])[1] != system or not coded(found[0])[0]:
            raise _meta(f"{obj}: {key} code must be coded in {system}")
    events = classifications(eo, S["event"])
    if any(coded(c)[1] not in EVENT_SYSTEMS or not coded(c)[0] for c in events):
        raise _meta(f"{obj}: eventCodeList entry from an unexpected code system")
    if not is_sig and not any(coded(c)[1] == "1.2.250.1.213.1.1.5.618" for c in events):
        raise _meta(f"{obj}: eventCodeList must hold the modality (1.2.250.1.213.1.1.5.618)")
    _check_author(eo, S["de_author"], obj)
    s = slots(eo)
    required = ["creationTime", "languageCode", "sourcePatientId", "serviceStartTime",
                "serviceStopTime", "legalAuthenticator"]
    if not is_sig:
        required += ["sourcePatientInfo", "urn:ihe:iti:xds:2013:referenceIdList"]
    for name in required:
        if not s.get(name) or not all(s[name]):
            raise _meta(f"{obj}: slot {name} missing")
    for name in ("creationTime", "serviceStartTime", "serviceStopTime"):
        if not DTM.fullmatch(s[name][0]):
            raise _meta(f"{obj}: {name} is not an HL7 DTM")
    if not XCN.fullmatch(s["legalAuthenticator"][0]):
        raise _meta(f"{obj}: legalAuthenticator is not an XCN")
    if not is_sig:
        refs = s["urn:ihe:iti:xds:2013:referenceIdList"]
        if not all(REF_ID.fullmatch(r) for r in refs):
            raise _meta(f"{obj}: referenceIdList entry malformed")
        if not any(r.endswith("2016:studyInstanceUID") for r in refs):
            raise _meta(f"{obj}: referenceIdList must hold the study instance UID")
        info = s["sourcePatientInfo"]
        if not any(v.startswith("PID-5|") for v in info) or not any(
                v.startswith("PID-7|") for v in info):
            raise _meta(f"{obj}: sourcePatientInfo needs PID-5 and PID-7")
    pid = external(eo, S["de_patient"])
    if pid != patient_id:
        raise Refusal("XDSPatientIdDoesNotMatch",
                      f"{obj}: patientId differs from the SubmissionSet's")
    src = s["sourcePatientId"][0]
    if src.rsplit("^", 1)[0] != patient_id.rsplit("^", 1)[0]:
        raise Refusal("XDSPatientIdDoesNotMatch", f"{obj}: sourcePatientId is another patient")
    uid = external(eo, S["de_unique"])
    if not uid or not OID.fullmatch(uid) or len(uid) > 64:
        raise _meta(f"{obj}: uniqueId missing or not an OID of at most 64 characters")
    if content is not None:
        if "hash" in s and s["hash"][0].lower() != hashlib.sha1(content).hexdigest():
            raise Refusal("XDSNonIdenticalHash", f"{obj}: hash does not match the document")
        if "size" in s and s["size"][0] != str(len(content)):
            raise Refusal("XDSNonIdenticalSize", f"{obj}: size does not match the document")
    return is_sig


def iter_digest_methods(manifest: etree._Element) -> Iterator[tuple[str, str, str]]:
    for ref in manifest.findall("ds:Reference", NS):
        yield (ref.get("URI", ""), ref.find("ds:DigestMethod", NS).get("Algorithm", "")  # type: ignore
               if ref.find("ds:DigestMethod", NS) is not None else "",
               ref.findtext("ds:DigestValue", "", NS).strip())


DIGESTS = {"http://www.w3.org/2000/09/xmldsig#sha1": hashlib.sha1,
           "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256}


def check_xades(sig_bytes: bytes, ss_uid: str, docs: dict[str, bytes], expected_id: str,
                anchors: list[x509.Certificate], limit: int) -> x509.Certificate:
    """The IHE DSG signature: valid, by a trusted key, and its manifest matches the documents."""
    try:
        root = parse_xml(sig_bytes, limit)
    except Refusal:
        raise Refusal("XDSRegistryMetadataError", "signature document is not XML") from None
    if root.tag != q("ds", "Signature"):
        raise _meta("signature document root must be ds:Signature")
    if root.get("Id") != expected_id:
        raise _meta("signature document Id must be its DocumentEntry uniqueId")
    refs = {r.get("URI"): r.get("Type") for r in root.findall("ds:SignedInfo/ds:Reference", NS)}
    man = root.find("ds:Object/ds:Manifest", NS)
    sp = root.find("ds:Object/xades:QualifyingProperties/xades:SignedProperties", NS)
    if man is None or sp is None:
        raise _meta("signature needs a ds:Manifest and XAdES SignedProperties")
    if refs.get("#" + (man.get("Id") or "")) != NS["ds"] + "Manifest":
        raise _meta("SignedInfo must reference the Manifest")
    if "#" + (sp.get("Id") or "") not in refs:
        raise _meta("SignedInfo must reference the SignedProperties")
    if sp.find("xades:SignedSignatureProperties/xades:SigningTime", NS) is None or sp.find(
            "xades:SignedSignatureProperties/xades:SigningCertificate", NS) is None:
        raise _meta("XAdES SigningTime and SigningCertificate are required")
    uris = {f"urn:oid:{u}": c for u, c in docs.items()}
    uris[f"urn:oid:{ss_uid}"] = b""
    try:
        cert = verify_signature(root, root, "Id", anchors, uris)
    except SecurityFault as e:
        raise Refusal("XDSRegistryMetadataError", f"XAdES signature refused: {e.text}") from None
    listed = {}
    for uri, alg, value in iter_digest_methods(man):
        listed[uri] = (alg, value)
    if f"urn:oid:{ss_uid}" not in listed:
        raise _meta("signature manifest does not name the SubmissionSet")
    for uid, content in docs.items():
        alg, value = listed.get(f"urn:oid:{uid}", ("", ""))
        h = DIGESTS.get(alg)
        if h is None or base64.b64encode(h(content).digest()).decode() != value:
            raise _meta(f"signature manifest digest of document {uid} does not match")
    return cert


def stored_query_values(text: str) -> list[str]:
    """Values of one stored-query Value element: ``'a'``, ``('a','b')`` or a bare number."""
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        return [t]
    inner = t[1:-1].strip() if t.startswith("(") and t.endswith(")") else t
    out, i = [], 0
    while i < len(inner):
        if inner[i] != "'":
            raise Refusal("XDSRegistryError", "malformed stored query value")
        j, buf = i + 1, []
        while True:
            if j >= len(inner):
                raise Refusal("XDSRegistryError", "unterminated string in stored query value")
            if inner[j] == "'":
                if j + 1 < len(inner) and inner[j + 1] == "'":
                    buf.append("'")
                    j += 2
                    continue
                break
            buf.append(inner[j])
            j += 1
        out.append("".join(buf))
        i = j + 1
        while i < len(inner) and inner[i] == " ":
            i += 1
        if i < len(inner):
            if inner[i] != ",":
                raise Refusal("XDSRegistryError", "malformed stored query list")
            i += 1
            while i < len(inner) and inner[i] == " ":
                i += 1
            if i >= len(inner):
                raise Refusal("XDSRegistryError", "trailing comma in stored query list")
    if not out:
        raise Refusal("XDSRegistryError", "empty stored query value")
    return out
