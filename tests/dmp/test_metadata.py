"""The typed submission refuses what would make an invalid DMP submission, with a clear message,
before anything is signed or sent; identifiers come from the input, never hard-coded."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from lxml import etree

from appliance.dmp import (
    Code,
    PatientId,
    PatientInfo,
    Person,
    ReferenceId,
    ReferenceType,
    SubmissionError,
    metadata,
)
from appliance.dmp.codes import NS


@pytest.mark.parametrize("ins, oid, words", [
    ("12345", "1.2.250.1.213.1.4.10", "15 characters"),
    ("248098765432112", "1.2.250.1.213.1.4.99", "not one of"),
    ("24809876543211X", "1.2.250.1.213.1.4.8", "15 characters"),
])
def test_bad_patient_identifier(ins, oid, words):
    with pytest.raises(SubmissionError, match=words):
        PatientId(ins, oid)


def test_corsican_ins_accepted():
    assert PatientId("18902" + "2A" + "12345612", "1.2.250.1.213.1.4.8").xds.endswith("&ISO^NH")


@pytest.mark.parametrize("oid", ["1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10",
                                 "1.2.250.1.213.1.4.11"])
def test_ins_oid_comes_from_the_input(make_submission, oid):
    s = make_submission(patient=PatientId("248098765432112", oid))
    rol = metadata.registry_objects(s, b"<sig/>", source_id="1.2.250.1.999.1.1.8121")
    values = {e.get("value") for e in rol.iterfind(".//rim:ExternalIdentifier", NS)}
    assert f"248098765432112^^^&{oid}&ISO^NH" in values
    assert not any("1.2.250.1.213.1.4" in v and oid not in v for v in values if "^NH" in v)


@pytest.mark.parametrize("change, words", [
    ({"event_codes": (Code("CT", "1.2.3"),)}, "neither modality"),
    ({"event_codes": (Code("774007", "1.2.250.1.213.1.1.5.695"),)}, "modality event code"),
    ({"facility_type": Code("SA07", "1.2.3")}, "facility type"),
    ({"practice_setting": Code("X", "1.2.3")}, "practice setting"),
    ({"confidentiality": ("SECRET",)}, "unknown DMP confidentiality flag"),
    ({"reference_ids": ()}, "accession number and the study UID"),
    ({"kos": b""}, "empty"),
    ({"kos_uid": "not-an-oid"}, "not an OID"),
    ({"creation_time": datetime(2024, 1, 1)}, "timezone-aware"),
])
def test_bad_submission_refused(make_submission, change, words):
    with pytest.raises(SubmissionError, match=words):
        make_submission(**change)


def test_service_times_in_order(make_submission):
    s = make_submission()
    with pytest.raises(SubmissionError, match="before service start"):
        replace(s, service_stop=s.service_start.replace(year=2000))


@pytest.mark.parametrize("make", [
    lambda: PatientInfo("A^B", "C", "19800101", "F"),
    lambda: PatientInfo("A", "B", "1980-01-01", "F"),
    lambda: PatientInfo("A", "B", "19800101", "X"),
    lambda: Person("1|2", "A", "B"),
    lambda: ReferenceId("ACC~1", "1.2.3", ReferenceType.ACCESSION),
    lambda: ReferenceId("ACC", "root", ReferenceType.ACCESSION),
])
def test_hl7_delimiters_and_formats_refused(make):
    with pytest.raises(SubmissionError):
        make()


def test_confidentiality_flags_become_codes(make_submission):
    s = make_submission(confidentiality=("MASQUE_PS", "INVISIBLE_PATIENT"))
    rol = metadata.registry_objects(s, b"<sig/>", source_id="1.2.250.1.999.1.1.8121")
    kos = rol.find("rim:ExtrinsicObject[@id='DocumentKOS']", NS)
    conf = {(c.get("nodeRepresentation"), c.find("rim:Slot/rim:ValueList/rim:Value", NS).text)
            for c in kos.iterfind("rim:Classification", NS)
            if c.get("classificationScheme") == "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"}
    assert conf == {("N", "2.16.840.1.113883.5.25"), ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"),
                    ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13")}
    slots = {sl.get("name"): [v.text for v in sl.iterfind(".//rim:Value", NS)]
             for sl in kos.iterfind("rim:Slot", NS)}
    assert slots["hash"] == [s.kos_sha1] and slots["size"] == [str(len(s.kos))]
    assert slots["sourcePatientInfo"] == ["PID-5|PAT-TEST^Alice^^^^^L", "PID-7|19800102", "PID-8|F"]
    assert etree.tostring(rol)  # serialisable


def test_replace_needs_an_entry_uuid(make_submission):
    with pytest.raises(SubmissionError, match="urn:uuid"):
        metadata.registry_objects(make_submission(), b"<sig/>", source_id="1.2.3",
                                  replaces="DocumentKOS")
