"""CDA extraction: refusals with a clear reason, hardened parsing, and the parts the ANS samples
do not exercise (several documentationOf, missing optional parts)."""

from __future__ import annotations

import pytest

from appliance.hl7.cda import CdaError, parse_cda

MINIMAL = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:ps3-20="urn:dicom-org:ps3-20">
  <id root="1.2.3.4.5" extension="DOC1"/>
  <title>CR</title>
  <recordTarget><patientRole>
    <id root="1.2.250.1.213.1.4.8" extension="185057800608436"/>
    <id root="1.2.250.1.999.1" extension="P77"/>
    <patient><name><family>X</family><given>Y</given></name>
      <administrativeGenderCode code="M"/><birthTime value="19850101"/></patient>
  </patientRole></recordTarget>
  <inFulfillmentOf><order><id root="1.2.9" extension="O1"/>
    <ps3-20:accessionNumber root="1.2.8" extension="A1"/></order></inFulfillmentOf>
  <documentationOf><serviceEvent><code code="X"/></serviceEvent></documentationOf>
  <documentationOf><serviceEvent><id root="1.2.826.0.1.3680043.2.1125.1"/>
    <code code="24727-0" codeSystem="2.16.840.1.113883.6.1">
      <translation code="MR" codeSystem="1.2.840.10008.2.16.4"/>
    </code></serviceEvent></documentationOf>
</ClinicalDocument>"""


def test_minimal_document_and_second_documentation_of():
    cda = parse_cda(MINIMAL)
    assert (cda.ins, cda.ins_oid, cda.ins_environment) == ("185057800608436",
                                                           "1.2.250.1.213.1.4.8", "prod")
    assert (cda.ipp, cda.ipp_oid) == ("P77", "1.2.250.1.999.1")
    assert cda.study_uid == "1.2.826.0.1.3680043.2.1125.1"  # the serviceEvent with an id
    assert cda.modality is not None and cda.modality.code == "MR"  # no qualifier, DCM system
    assert (cda.author, cda.legal_authenticator, cda.replaces, cda.practice_setting) == (
        None, None, None, None)
    assert cda.accession is not None and cda.accession.extension == "A1"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"not xml", "well-formed"),
    (b"<ClinicalDocument xmlns='urn:hl7-org:v3'>", "well-formed"),
    (b"<ClinicalDocument/>", "ClinicalDocument"),  # no namespace
    (MINIMAL.replace(b'<id root="1.2.3.4.5" extension="DOC1"/>', b""), "document id"),
    (MINIMAL.replace(b"1.2.250.1.213.1.4.8", b"1.2.250.1.999.2"), "INS"),
    (MINIMAL.replace(b"<recordTarget>", b"<x>").replace(b"</recordTarget>", b"</x>"),
     "recordTarget"),
    (MINIMAL.replace(b'<id root="1.2.826.0.1.3680043.2.1125.1"/>', b"")
     .replace(b'<ps3-20:accessionNumber root="1.2.8" extension="A1"/>', b""), "study UID"),
])
def test_refusals_have_a_reason(data, reason):
    with pytest.raises(CdaError) as e:
        parse_cda(data)
    assert reason.lower() in e.value.reason.lower()
    assert e.value.ack_code == "AE"
    assert e.value.reason.startswith("CDA: ")


def test_size_limit():
    with pytest.raises(CdaError, match="limit"):
        parse_cda(MINIMAL, max_bytes=100)
    assert parse_cda(MINIMAL, max_bytes=len(MINIMAL)).document_id.extension == "DOC1"


def test_external_entity_is_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    doc = (b'<?xml version="1.0"?><!DOCTYPE ClinicalDocument [<!ENTITY s SYSTEM "'
           + secret.as_uri().encode() + b'">]>'
           + MINIMAL.split(b"?>", 1)[1].replace(b"<title>CR</title>", b"<title>&s;</title>"))
    with pytest.raises(CdaError, match="DOCTYPE") as e:
        parse_cda(doc)
    assert "TOPSECRET" not in e.value.reason


def test_entity_expansion_bomb_is_refused_quickly():
    bomb = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "' + b"x" * 100 + b'">'
    for i in range(1, 10):
        bomb += b'<!ENTITY a%d "' % i + (b"&a%d;" % (i - 1) if i > 1 else b"&a;") * 10 + b'">'
    bomb += b']><ClinicalDocument xmlns="urn:hl7-org:v3">&a9;</ClinicalDocument>'
    with pytest.raises(CdaError):
        parse_cda(bomb)
