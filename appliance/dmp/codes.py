"""Codes, code systems and XDS identifiers the DMP uses (PROTOCOLS.md §2.4, §3, §4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded value: ``code`` in ``system`` (an OID or a URN), with its display name."""

    code: str
    system: str
    display: str = ""


# Code systems.
INS_OIDS = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR test",
    "1.2.250.1.213.1.4.11": "INS-NIR demo",
}
RPPS_OID = "1.2.250.1.71.4.2.1"          # national person identifiers (IDNPS)
STRUCTURE_OID = "1.2.250.1.71.4.2.2"     # national structure identifiers (IDNST)
FACILITY_TYPE_SYSTEM = "1.2.250.1.71.4.2.4"   # healthcareFacilityTypeCode, Secteur_Activite
PRACTICE_SETTING_SYSTEM = "1.2.250.1.213.1.1.4.9"
MODALITY_SYSTEM = "1.2.250.1.213.1.1.5.618"
REGION_SYSTEM = "1.2.250.1.213.1.1.5.695"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"
DMP_FLAG_SYSTEM = "1.2.250.1.213.1.1.4.13"
PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"
SPECIALTY_SYSTEM = "1.2.250.1.71.4.2.5"
PURPOSE_SYSTEM = "1.2.250.1.213.1.1.4.248"
ACCESS_REASON_SYSTEM = "1.2.250.1.213.1.1.4.11"

CLASS_IMAGING = Code("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale")
TYPE_KOS = Code("IMG-KOS", "1.2.250.1.213.1.1.4.12", "Reference d'objets d'un examen d'imagerie")
FORMAT_KOS = Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1",
                  "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I")
CONFIDENTIALITY_NORMAL = Code("N", CONFIDENTIALITY_SYSTEM, "Normal")
DMP_FLAGS = {
    "MASQUE_PS": Code("MASQUE_PS", DMP_FLAG_SYSTEM, "Masqué aux professionnels de santé"),
    "INVISIBLE_PATIENT": Code("INVISIBLE_PATIENT", DMP_FLAG_SYSTEM, "Non visible par le patient"),
    "INVISIBLE_REP_LEGAUX": Code("INVISIBLE_REP_LEGAUX", DMP_FLAG_SYSTEM,
                                 "Non visible par les représentants légaux du patient"),
}
# Placeholder used by the ANS samples and the demonstrator (PROTOCOLS.md §2.4).
CONTENT_TYPE_DEFAULT = Code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")

# IHE DSG signature document.
CLASS_SIGNATURE = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
TYPE_SIGNATURE = Code("E1762", "ASTM", "Full Document")
FORMAT_SIGNATURE = Code("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
EVENT_SIGNATURE_SOURCE = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")
PURPOSE_NORMAL = Code("normal", PURPOSE_SYSTEM, "Acces normal")

# XDS classification schemes and identification schemes (ITI TF-3 Table 4.2.5-1).
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
DE_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"

# Associations and statuses.
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"

# Stored queries (ITI-18).
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"

# SOAP actions.
ACTION_ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
ACTION_TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"

# Namespaces.
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
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
