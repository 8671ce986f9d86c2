"""The VIHF v3.0: the SAML 2.0 assertion that tells the DMP who acts, for whom and how.

Attributes and their order follow PROTOCOLS.md §2.4 and the ANS sample. The enveloped signature
(exclusive C14N) is made with the organisation's signature key on the token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from lxml import etree

from . import xmldsig
from .codes import (
    FACILITY_TYPE_SYSTEM,
    NS,
    PROFESSION_SYSTEM,
    PURPOSE_NORMAL,
    SPECIALTY_SYSTEM,
    Code,
)
from .signer import Signer

SAML = NS["saml2"]
HL7 = NS["hl7"]
XSI = NS["xsi"]
TLS_CLIENT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
X509_SUBJECT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"


class AuthMode(StrEnum):
    """``Authentification_Mode``: the box publishes on its own (INDIRECTE); a consumer read carries
    the professional authenticated by Pro Santé Connect (INDIRECTE_RENFORCEE)."""

    INDIRECTE = "INDIRECTE"
    INDIRECTE_RENFORCEE = "INDIRECTE_RENFORCEE"


@dataclass(frozen=True)
class Software:
    """The ``LPS_*`` identifiers of this software, as registered with the DMP."""

    id: str
    name: str
    version: str
    homologation: str


@dataclass(frozen=True)
class Actor:
    """The professional on whose behalf a request is made, and where they work."""

    identifier: str          # NameID: national PS identifier (RPPS-based, e.g. "8" + RPPS)
    name: str                # subject-id: the professional's name as displayed
    profession: Code         # role in 1.2.250.1.71.1.2.7 (e.g. 10 Médecin)
    structure_id: str        # Identifiant_Structure (IDNST of the organisation)
    sector: str              # Secteur_Activite code in 1.2.250.1.71.4.2.4 (e.g. SA07)
    mode: AuthMode = AuthMode.INDIRECTE
    specialty: Code | None = None   # savoir-faire in 1.2.250.1.71.4.2.5 (e.g. SM44)

    def __post_init__(self) -> None:
        for name in ("identifier", "name", "structure_id", "sector"):
            if not getattr(self, name).strip():
                raise ValueError(f"Actor.{name} must not be empty")
        if self.profession.system != PROFESSION_SYSTEM:
            raise ValueError(f"Actor.profession must be coded in {PROFESSION_SYSTEM}")


def subject_dn(cert: x509.Certificate) -> str:
    """The certificate subject written most specific first, as in the ANS sample."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(cert.subject.rdns))


def _ce(parent: etree._Element, tag: str, code: Code) -> None:
    etree.SubElement(parent, f"{{{HL7}}}{tag}", {
        "code": code.code, "codeSystem": code.system, "codeSystemName": "",
        "displayName": code.display, f"{{{XSI}}}type": "CE"}, nsmap={None: HL7, "xsi": XSI})


def build(actor: Actor, patient_id: str, software: Software, signer: Signer,
          *, digest: str = "sha256", now: datetime | None = None) -> etree._Element:
    """A signed VIHF assertion for ``actor`` acting on the record ``patient_id`` (``…^NH``)."""
    now = now or datetime.now(UTC)
    instant = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    aid = "_" + uuid.uuid4().hex
    a = etree.Element(f"{{{SAML}}}Assertion", {"ID": aid, "IssueInstant": instant,
                                               "Version": "2.0"}, nsmap={"saml2": SAML})
    etree.SubElement(a, f"{{{SAML}}}Issuer", Format=X509_SUBJECT).text = subject_dn(
        signer.certificate)
    subject = etree.SubElement(a, f"{{{SAML}}}Subject")
    etree.SubElement(subject, f"{{{SAML}}}NameID").text = actor.identifier
    authn = etree.SubElement(a, f"{{{SAML}}}AuthnStatement", AuthnInstant=instant)
    ctx = etree.SubElement(authn, f"{{{SAML}}}AuthnContext")
    etree.SubElement(ctx, f"{{{SAML}}}AuthnContextClassRef").text = TLS_CLIENT
    st = etree.SubElement(a, f"{{{SAML}}}AttributeStatement")

    def attr(name: str, *values: str) -> etree._Element:
        at = etree.SubElement(st, f"{{{SAML}}}Attribute", Name=name)
        for v in values:
            etree.SubElement(at, f"{{{SAML}}}AttributeValue").text = v
        return at

    attr("VIHF_Version", "3.0")
    attr("Secteur_Activite", f"{actor.sector}^{FACILITY_TYPE_SYSTEM}")
    attr("Ressource_URN", "urn:dmp")
    attr("urn:oasis:names:tc:xspa:1.0:subject:subject-id", actor.name)
    attr("Identifiant_Structure", actor.structure_id)
    attr("LPS_ID", software.id)
    attr("LPS_Nom", software.name)
    attr("LPS_ID_HOMOLOGATION_DMP", software.homologation)
    attr("LPS_Version", software.version)
    attr("urn:oasis:names:tc:xacml:2.0:resource:resource-id", patient_id)
    attr("Authentification_Mode", str(actor.mode))
    purpose = attr("urn:oasis:names:tc:xspa:1.0:subject:purposeofuse")
    _ce(etree.SubElement(purpose, f"{{{SAML}}}AttributeValue"), "PurposeOfUse", PURPOSE_NORMAL)
    role = attr("urn:oasis:names:tc:xacml:2.0:subject:role")
    _ce(etree.SubElement(role, f"{{{SAML}}}AttributeValue"), "Role", actor.profession)
    if actor.specialty is not None:
        _ce(etree.SubElement(role, f"{{{SAML}}}AttributeValue"), "Role", actor.specialty)

    dig = xmldsig.digest(digest)
    # Enveloped transform: the digest is over the assertion before the signature is inserted.
    value = dig.of(xmldsig.canonical(a, "exclusive"))
    sig = etree.Element(xmldsig.ds("Signature"), nsmap={"ds": NS["ds"]})
    a.insert(1, sig)  # right after Issuer, as SAML 2.0 requires
    si = xmldsig.signed_info(sig, signer, "exclusive")
    xmldsig.add_reference(si, "#" + aid, dig, value,
                          transforms=(xmldsig.ENVELOPED, xmldsig.EXC_C14N))
    xmldsig.sign_and_finish(sig, si, signer, "exclusive")
    return a


def consumer_actor(userinfo: dict[str, Any], structure_id: str | None = None) -> Actor:
    """The VIHF actor of a consumer read, from Pro Santé Connect ``/userinfo`` (PROTOCOLS.md §4.2):
    ``SubjectNameID``, and from ``SubjectRefPro.exercices[0]`` the profession, the specialty
    (savoir-faire), the name and the activity whose ``ancienIdentifiantDeLaStructure`` is
    ``structure_id`` (the contextual call's ``Situation``; the only activity when omitted)."""
    try:
        exercice = userinfo["SubjectRefPro"]["exercices"][0]
        activities = list(exercice.get("activities") or [])
        name_id = str(userinfo["SubjectNameID"]).strip()
        profession = str(exercice["codeProfession"]).strip()
    except (KeyError, IndexError, TypeError):
        raise ValueError("PSC userinfo lacks SubjectNameID or SubjectRefPro.exercices[0]"
                         ".codeProfession") from None
    if structure_id is None:
        if len(activities) != 1:
            raise ValueError("the professional works in several structures: the work situation "
                             "must be chosen")
        activity = activities[0]
    else:
        found = [a for a in activities if a.get("ancienIdentifiantDeLaStructure") == structure_id]
        if not found:
            raise ValueError("the chosen work situation is not one of the professional's")
        activity = found[0]
    sector = str(activity.get("codeSecteurDactivite") or "").strip()
    structure = str(activity.get("ancienIdentifiantDeLaStructure") or "").strip()
    if not sector or not structure:
        raise ValueError("the work situation lacks its sector or structure identifier")
    savoir_faire = str(exercice.get("codeSavoirFaire") or "").strip()
    name = " ".join(str(exercice.get(k) or "").strip()
                    for k in ("prenomDexercice", "nomDexercice")).strip()
    return Actor(identifier=name_id, name=name or name_id,
                 profession=Code(profession, PROFESSION_SYSTEM),
                 specialty=Code(savoir_faire, SPECIALTY_SYSTEM) if savoir_faire else None,
                 structure_id=structure, sector=sector, mode=AuthMode.INDIRECTE_RENFORCEE)
