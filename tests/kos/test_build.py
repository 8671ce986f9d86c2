"""A built KOS is a conformant DRIM-M manifest: dciodvfy-clean, complete, and reads back the same."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pydicom
import pytest

from appliance.dicom.kos import (
    MANIFEST,
    Code,
    Instance,
    KosBuildError,
    build_kos,
    parse_kos,
)
from appliance.dicom.uids import new_uid

from .conftest import CT_IMAGE, INS_TEST_OID, PUBLIC_URL, make_instances, patient, study

SERIES_SHAPES = {
    "1-series-CT": [("CT", 1)],
    "3-series-CT-MR": [("CT", 120), ("MR", 24), ("MR", 30)],
    "many-series-CT-MR": [("CT" if n % 2 else "MR", 5 + n) for n in range(40)],
}


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("shape", SERIES_SHAPES.values(), ids=SERIES_SHAPES.keys())
def test_kos_passes_dciodvfy_and_dsrdump(shape, make_request, dciodvfy, dsrdump):
    built = build_kos(make_request(shape))
    verdict = dciodvfy(built.data)
    print("\n".join(sorted(set(verdict.warnings))))  # reported, allowed
    assert verdict.errors == [], verdict.output
    dump = dsrdump(built.data)
    assert dump.returncode == 0, dump.stderr
    assert "E:" not in dump.stderr, dump.stderr


def test_part10_explicit_little_endian_with_its_uid(make_request):
    built = build_kos(make_request())
    assert built.data[128:132] == b"DICM"
    ds = read(built.data)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == built.sop_instance_uid
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert ds.Modality == "KO" and ds.SeriesInstanceUID == built.series_instance_uid


def test_manifest_title_and_template(make_request):
    ds = read(build_kos(make_request()).data)
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113030", "DCM", "Manifest")
    assert ds.ValueType == "CONTAINER" and ds.ContinuityOfContent == "SEPARATE"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"


def test_patient_module_carries_the_ins_and_its_issuer(make_request):
    ds = read(build_kos(make_request()).data)
    assert ds.PatientID == "2770763220829"
    assert ds.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    q = ds.IssuerOfPatientIDQualifiersSequence[0]
    assert (q.UniversalEntityID, q.UniversalEntityIDType) == (INS_TEST_OID, "ISO")
    other = ds.OtherPatientIDsSequence[0]
    assert (other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID) == (
        "2770763220829", "ASIP-SANTE-INS-NIR", "TEXT")
    assert other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_TEST_OID
    assert str(ds.PatientName) == "DUPONT^Hélène Marie"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19770706", "F")


def test_nia_oid_names_the_nia_authority(make_request):
    req = make_request(patient=patient(ins_oid="1.2.250.1.213.1.4.9"))
    assert read(build_kos(req).data).IssuerOfPatientID == "ASIP-SANTE-INS-NIA"


def test_referenced_request_has_accession_and_order_with_issuers(make_request):
    req = make_request()
    ds = read(build_kos(req).data)
    rr = ds.ReferencedRequestSequence[0]
    assert rr.StudyInstanceUID == req.study.study_uid
    assert rr.AccessionNumber == "ACC2024001"
    assert rr.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.999.1.2.3"
    assert rr.IssuerOfAccessionNumberSequence[0].UniversalEntityIDType == "ISO"
    assert rr.PlacerOrderNumberImagingServiceRequest == "ORD-77"
    assert rr.OrderPlacerIdentifierSequence[0].UniversalEntityID == "1.2.250.1.999.1.2.4"
    assert rr.FillerOrderNumberImagingServiceRequest == "FIL-88"
    assert ds.AccessionNumber == "ACC2024001"
    assert (ds.StudyID, ds.StudyDate, ds.StudyTime) == ("ST42", "20240502", "093005")


def test_one_retrieve_url_per_series(make_request):
    req = make_request([("CT", 4), ("MR", 2), ("MR", 3)], public_url=PUBLIC_URL + "/")
    ds = read(build_kos(req).data)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == req.study.study_uid
    series = evidence[0].ReferencedSeriesSequence
    expected = {i.series_uid for i in req.instances}
    assert {s.SeriesInstanceUID for s in series} == expected and len(series) == 3
    for s in series:
        assert s.RetrieveURL == (f"{PUBLIC_URL}/dicom-web/studies/{req.study.study_uid}"
                                 f"/series/{s.SeriesInstanceUID}")
        members = {i.sop_instance_uid for i in req.instances if i.series_uid == s.SeriesInstanceUID}
        assert {r.ReferencedSOPInstanceUID for r in s.ReferencedSOPSequence} == members


def test_one_image_content_item_per_instance(make_request):
    req = make_request([("CT", 7), ("MR", 5)])
    ds = read(build_kos(req).data)
    images = [c for c in ds.ContentSequence if c.ValueType == "IMAGE"]
    assert len(images) == 12
    assert all(c.RelationshipType == "CONTAINS" for c in images)
    referenced = [c.ReferencedSOPSequence[0] for c in images]
    assert {r.ReferencedSOPInstanceUID for r in referenced} == {
        i.sop_instance_uid for i in req.instances}
    assert {r.ReferencedSOPClassUID for r in referenced} == {
        CT_IMAGE, "1.2.840.10008.5.1.4.1.1.4"}


def test_non_image_objects_are_composite_items(make_request, dciodvfy):
    req = make_request([("CT", 2)])
    dose = Instance(new_uid(), "SR", 900, "Dose", "1.2.840.10008.5.1.4.1.1.88.67", new_uid(), 1)
    built = build_kos(replace(req, instances=[*req.instances, dose]))
    ds = read(built.data)
    kinds = {c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: c.ValueType
             for c in ds.ContentSequence if "ReferencedSOPSequence" in c}
    assert kinds[dose.sop_instance_uid] == "COMPOSITE"
    assert sorted(kinds.values()) == ["COMPOSITE", "IMAGE", "IMAGE"]
    assert dciodvfy(built.data).errors == []


def test_device_observer_context_names_the_box(make_request):
    ds = read(build_kos(make_request(device_name="drimbox-1")).data)
    ctx = [c for c in ds.ContentSequence if c.RelationshipType == "HAS OBS CONTEXT"]
    by_concept = {c.ConceptNameCodeSequence[0].CodeValue: c for c in ctx}
    assert by_concept["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # a device
    assert by_concept["121013"].TextValue == "drimbox-1"
    device_uid = by_concept["121012"].UID
    # The same device UID locates the series for retrieval (RetrieveLocationUID).
    for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        assert s.RetrieveLocationUID == device_uid


def test_round_trip_through_parse_kos(make_request):
    req = make_request([("CT", 3), ("MR", 2)])
    built = build_kos(req)
    m = parse_kos(built.data)
    assert m.sop_instance_uid == built.sop_instance_uid
    assert m.title == MANIFEST
    assert m.study_uid == req.study.study_uid
    assert (m.patient_id, m.patient_id_issuer_oid) == ("2770763220829", INS_TEST_OID)
    assert m.accession_number == "ACC2024001"
    assert m.instance_number == 1
    assert m.sop_instance_uids == {i.sop_instance_uid for i in req.instances}
    assert set(m.retrieve_urls) == {i.series_uid for i in req.instances}
    assert all(u and u.startswith(PUBLIC_URL + "/dicom-web/") for u in m.retrieve_urls.values())


def test_creation_time_and_offset_are_recorded(make_request):
    when = datetime(2024, 5, 3, 14, 15, 16, tzinfo=timezone(timedelta(hours=2)))
    m = parse_kos(build_kos(make_request(created=when)).data)
    assert m.created == when


def test_new_version_keeps_series_and_increments_instance_number(make_request, dciodvfy):
    req = make_request([("CT", 3)])
    first = build_kos(req)
    previous = parse_kos(first.data)
    fewer = replace(req, instances=req.instances[1:], previous=previous)
    second = build_kos(fewer)
    assert second.sop_instance_uid != first.sop_instance_uid
    assert second.series_instance_uid == first.series_instance_uid
    assert second.instance_number == 2
    assert dciodvfy(second.data).errors == []
    third = build_kos(replace(fewer, previous=parse_kos(second.data)))
    assert third.instance_number == 3
    m = parse_kos(third.data)
    assert m.instance_number == 3 and m.series_number == previous.series_number
    assert req.instances[0].sop_instance_uid not in m.sop_instance_uids


def test_previous_kos_of_another_study_or_patient_is_refused(make_request):
    previous = parse_kos(build_kos(make_request()).data)
    with pytest.raises(KosBuildError, match="another study"):
        build_kos(make_request(previous=previous))
    other_patient = make_request(patient=patient(ins="1234567890123"))
    other_patient = replace(other_patient, study=replace(other_patient.study,
                                                         study_uid=previous.study_uid))
    with pytest.raises(KosBuildError, match="another patient"):
        build_kos(replace(other_patient, previous=previous))


def test_uids_never_collide(make_request):
    req = make_request([("CT", 1)])
    built = [build_kos(req) for _ in range(100)]
    uids = [b.sop_instance_uid for b in built] + [b.series_instance_uid for b in built]
    assert len(set(uids)) == 200
    referenced = {req.study.study_uid} | {i.sop_instance_uid for i in req.instances}
    assert not referenced & set(uids)


def test_organisation_root_prefixes_the_new_uids(make_request, dciodvfy):
    built = build_kos(make_request(uid_root="1.2.250.1.999.7"))
    assert built.sop_instance_uid.startswith("1.2.250.1.999.7.")
    assert built.series_instance_uid.startswith("1.2.250.1.999.7.")
    assert len(built.sop_instance_uid) <= 64
    assert dciodvfy(built.data).errors == []


def test_name_outside_latin1_switches_to_utf8(make_request, dciodvfy):
    built = build_kos(make_request(patient=patient(family_name="CŒUR", given_names="Zoë")))
    ds = read(built.data)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "CŒUR^Zoë"
    assert dciodvfy(built.data).errors == []


def test_duplicate_cfind_rows_are_listed_once(make_request):
    req = make_request([("CT", 3)])
    m = parse_kos(build_kos(replace(req, instances=[*req.instances, req.instances[0]])).data)
    assert sum(len(s.sops) for s in m.series) == 3


def test_instances_ordered_by_series_then_instance_number(make_request):
    req = make_request([("CT", 4), ("MR", 3)])
    shuffled = list(reversed(req.instances))
    m = parse_kos(build_kos(replace(req, instances=shuffled)).data)
    assert [s.series_uid for s in m.series] == list(dict.fromkeys(i.series_uid for i in req.instances))
    assert [sop.sop_instance_uid for sop in m.series[0].sops] == [
        i.sop_instance_uid for i in req.instances[:4]]


BAD = {
    "no instances": ({"instances": []}, "instances"),
    "bad study uid": ({"study": study(study_uid="1.2.03")}, "study.study_uid"),
    "accession too long": ({"study": study(accession_number="A" * 17)}, "AccessionNumber"),
    "missing ins": ({"patient": patient(ins=" ")}, "patient.ins"),
    "bad ins oid": ({"patient": patient(ins_oid="INS")}, "patient.ins_oid"),
    "non-INS oid": ({"patient": patient(ins_oid="1.2.250.1.999.1")}, "patient.ins_oid"),
    "bad sex": ({"patient": patient(sex="X")}, "patient.sex"),
    "rejection title": ({"title": Code("113001", "DCM")}, "title"),
    "caret in name": ({"patient": patient(family_name="A^B")}, "patient name"),
    "bad issuer oid": ({"study": study(accession_issuer_oid="x.y")}, "accession_issuer_oid"),
    "ftp public url": ({"public_url": "ftp://db1.example.org"}, "public_url"),
    "bad uid root": ({"uid_root": "1.2.3.04"}, "uid_root"),
    "long uid root": ({"uid_root": "1.2." + "3" * 40}, "uid_root"),
    "bad title code": ({"title": Code("113030", "DCM", "M" * 65)}, "CodeMeaning"),
}


@pytest.mark.parametrize("overrides,field", BAD.values(), ids=BAD.keys())
def test_bad_requests_get_a_clear_error(make_request, overrides, field):
    with pytest.raises(KosBuildError, match=field.replace(".", r"\.")):
        build_kos(make_request(**overrides))


def test_bad_instance_uid_and_conflicting_duplicate(make_request):
    req = make_request([("CT", 2)])
    bad = replace(req.instances[0], sop_instance_uid="1.2.3.abc")
    with pytest.raises(KosBuildError, match=r"instances\[0\]\.sop_instance_uid"):
        build_kos(replace(req, instances=[bad]))
    moved = replace(req.instances[0], series_uid=new_uid())
    with pytest.raises(KosBuildError, match="listed twice"):
        build_kos(replace(req, instances=[*req.instances, moved]))


def test_instances_helper_gives_distinct_series():
    assert len({i.series_uid for i in make_instances([("CT", 1), ("MR", 1)])}) == 2


def test_invalid_values_never_reach_messages_or_logs(make_request, caplog, recwarn):
    secret_ins = "27707632\\20829"  # a backslash is not allowed in PatientID (LO)
    with caplog.at_level("DEBUG"), pytest.raises(KosBuildError, match="PatientID") as err:
        build_kos(make_request(patient=patient(ins=secret_ins)))
    assert secret_ins not in str(err.value)
    assert not any(secret_ins in r.getMessage() for r in caplog.records)
    assert not any(secret_ins in str(w.message) for w in recwarn)


def test_unknown_sex_is_written_empty(make_request):
    assert read(build_kos(make_request(patient=patient(sex="U"))).data).PatientSex == ""
