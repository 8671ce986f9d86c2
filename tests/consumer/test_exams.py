"""A consumer professional lists a patient's imaging exams from the strict DMP simulator, as
published by a source box: the right exams and series, filters, masking, access refusals, DMP
faults, and manifests that are broken or lie."""

from __future__ import annotations

import uuid
from dataclasses import replace as dc_replace
from datetime import timedelta

import pytest
from lxml import etree

from appliance.consumer import (
    AccessRefused,
    ListingStatus,
    RefusalReason,
    UrlPolicy,
    list_exams,
)
from appliance.dmp import (
    DmpPermanentError,
    DmpRetryableError,
    PatientId,
    ReferenceId,
    ReferenceType,
)
from appliance.dmp.vihf import AuthMode
from appliance.store.db import Database
from tests.consumer.conftest import ACCESSION_ROOT, PATIENT, inject_fault

pytestmark = pytest.mark.integration


def by_accession(listing):
    return {x.accession: x for x in listing.exams}


async def test_lists_the_published_exams_newest_first(client, consumer, three_exams):
    ct, mr, _masked = three_exams
    listing = await list_exams(client, PATIENT, consumer)
    assert listing.status is ListingStatus.OK
    # The masked exam is invisible to a professional of another structure.
    assert [x.accession for x in listing.exams] == ["ACC-MR-2", "ACC-CT-1"]
    for pub, exam in zip((mr, ct), listing.exams):
        assert exam.problem is None and exam.viewable
        assert exam.kos_uid == pub.kos_uid
        assert exam.study_uid == pub.study_uid
        assert exam.modalities == (pub.modality,)
        assert [c.code for c in exam.regions] == [pub.region]
        assert exam.institution is not None
        assert (exam.institution.name, exam.institution.id) == ("CABINET RADIOLOGIE TEST",
                                                                 "499700367909006")
        assert exam.confidentiality == ("N",) and not exam.masked
        assert exam.service_start == pub.submission.service_start
        assert exam.created == pub.submission.creation_time
        assert {s.series_uid: s.sop_instance_uids for s in exam.series} == pub.series
        for s in exam.series:
            assert s.url_problem is None and s.target is not None
            assert s.target.host == "db1.test.mesimagesmedicales.fr"
            assert (s.target.study_uid, s.target.series_uid) == (pub.study_uid, s.series_uid)
            assert s.retrieve_url == (f"https://db1.test.mesimagesmedicales.fr/dicom-web/studies/"
                                      f"{pub.study_uid}/series/{s.series_uid}")


async def test_the_publishing_structure_sees_its_masked_exam_flagged(client, author_colleague,
                                                                      three_exams):
    listing = await list_exams(client, PATIENT, author_colleague)
    exams = by_accession(listing)
    assert set(exams) == {"ACC-CT-1", "ACC-MR-2", "ACC-CT-3"}
    assert exams["ACC-CT-3"].masked and exams["ACC-CT-3"].confidentiality == ("N", "MASQUE_PS")
    assert exams["ACC-CT-3"].viewable


async def test_filters(client, consumer, three_exams, simulator):
    _, mr, _ = three_exams
    async def accessions(**filters):
        return [x.accession for x in (await list_exams(client, PATIENT, consumer, **filters)).exams]

    assert await accessions(modality="MR") == ["ACC-MR-2"]
    assert await accessions(modality="CT") == ["ACC-CT-1"]
    assert await accessions(modality="US") == []
    assert await accessions(region="774007") == ["ACC-CT-1"]
    assert await accessions(modality="CT", region="72696002") == []
    assert await accessions(accession="ACC-MR-2") == ["ACC-MR-2"]
    queries = simulator.stats.get("iti18", 0)
    ref = ReferenceId("ACC-CT-1", ACCESSION_ROOT, ReferenceType.ACCESSION)
    assert await accessions(accession=ref) == ["ACC-CT-1"]
    assert simulator.stats["iti18"] == queries + 1
    other_issuer = ReferenceId("ACC-CT-1", "1.2.250.1.999.9", ReferenceType.ACCESSION)
    assert await accessions(accession=other_issuer) == []
    day = mr.submission.service_start.astimezone().date()     # a local date, as the RIS sends
    assert await accessions(study_date=day.strftime("%Y%m%d")) == ["ACC-MR-2"]
    span = f"{(day - timedelta(days=1)):%Y%m%d}-{day:%Y%m%d}"
    assert await accessions(study_date=span) == ["ACC-MR-2", "ACC-CT-1"]


async def test_masked_exam_not_listed_even_by_its_accession(client, consumer, three_exams):
    ref = ReferenceId("ACC-CT-3", ACCESSION_ROOT, ReferenceType.ACCESSION)
    assert (await list_exams(client, PATIENT, consumer, accession=ref)).exams == ()


@pytest.mark.parametrize("authorization, opposition, reason", [
    ("VALIDE", "yes", RefusalReason.OPPOSED),
    ("INTERDITE", "no", RefusalReason.NOT_AUTHORISED),
])
async def test_access_refused_before_any_query(client, consumer, simulator, three_exams,
                                               tmp_path, authorization, opposition, reason):
    simulator.add_patient(PATIENT.xds, authorization=authorization, opposition=opposition)
    queries = simulator.stats.get("iti18", 0)
    db = Database(tmp_path / "state.db")
    with pytest.raises(AccessRefused) as e:
        await list_exams(client, PATIENT, consumer, db=db)
    assert e.value.reason is reason
    assert simulator.stats.get("iti18", 0) == queries and "iti43" not in simulator.stats
    [row] = db.query("SELECT action, outcome, detail FROM audit_events")
    assert (row["action"], row["outcome"]) == ("dmp.list", "refused")
    assert str(reason) in row["detail"]


async def test_unknown_patient_has_no_record(client, consumer, simulator):
    stranger = PatientId("199019912345678", PATIENT.oid)
    with pytest.raises(AccessRefused) as e:
        await list_exams(client, stranger, consumer)
    assert e.value.reason is RefusalReason.NO_RECORD
    assert "iti18" not in simulator.stats


async def test_unknown_opposition_asks_for_consent_then_lists(client, consumer, simulator,
                                                              three_exams):
    simulator.add_patient(PATIENT.xds, opposition="unknown")
    first = await list_exams(client, PATIENT, consumer)
    assert first.status is ListingStatus.CONSENT_REQUIRED and first.exams == ()
    assert "iti18" not in simulator.stats
    second = await list_exams(client, PATIENT, consumer, patient_informed=True)
    assert second.status is ListingStatus.OK and len(second.exams) == 2


async def test_registry_outage_is_retryable_and_passes(client, consumer, pki, simulator,
                                                       three_exams, tmp_path):
    db = Database(tmp_path / "state.db")
    await inject_fault(pki, simulator, {"kind": "status", "status": 503, "service": "registry"})
    with pytest.raises(DmpRetryableError) as e:
        await list_exams(client, PATIENT, consumer, db=db)
    assert "HTTP 503" in str(e.value)
    assert len((await list_exams(client, PATIENT, consumer, db=db)).exams) == 2
    rows = db.query("SELECT outcome, detail FROM audit_events ORDER BY id")
    assert [r["outcome"] for r in rows] == ["error", "ok"]
    assert "DmpRetryableError" in rows[0]["detail"]


async def test_access_check_refused_by_the_dmp_is_permanent(client, consumer, pki, simulator):
    await inject_fault(pki, simulator, {"kind": "soap_fault", "service": "patients",
                                        "code": "wsse:FailedAuthentication", "text": "VIHF"})
    with pytest.raises(DmpPermanentError) as e:
        await list_exams(client, PATIENT, consumer)
    assert not isinstance(e.value, DmpRetryableError)


async def test_one_kos_retrieve_fails_the_others_are_listed(client, consumer, pki, simulator,
                                                            three_exams):
    await inject_fault(pki, simulator, {"kind": "reset", "service": "repository"})
    exams = (await list_exams(client, PATIENT, consumer)).exams
    assert len(exams) == 2
    failed = [x for x in exams if x.problem is not None]
    assert len(failed) == 1
    assert failed[0].problem.stage == "retrieve" and failed[0].problem.retryable
    assert failed[0].series == () and not failed[0].viewable
    assert failed[0].accession and failed[0].modalities     # still listed from its metadata
    assert next(x for x in exams if x.problem is None).viewable


async def test_garbage_kos_is_reported_on_its_exam(client, consumer, publish, three_exams):
    await publish("CT", "774007", "ACC-BAD", days_ago=5, kos=b"\x00garbage, not DICOM" * 50)
    exams = by_accession(await list_exams(client, PATIENT, consumer))
    assert set(exams) == {"ACC-CT-1", "ACC-MR-2", "ACC-BAD"}
    bad = exams["ACC-BAD"]
    assert bad.problem is not None and bad.problem.stage == "kos"
    assert not bad.problem.retryable and "cannot be read" in bad.problem.message
    assert bad.series == () and not bad.viewable
    assert exams["ACC-CT-1"].viewable and exams["ACC-MR-2"].viewable


async def test_kos_of_another_patient_is_not_trusted(client, consumer, publish):
    await publish("CT", "774007", "ACC-X", ins="277076543210987")
    [exam] = (await list_exams(client, PATIENT, consumer)).exams
    assert exam.problem is not None and "another patient" in exam.problem.message
    assert exam.series == ()
    assert "277076543210987" not in exam.problem.message


async def test_kos_whose_study_differs_from_its_entry_is_not_trusted(client, consumer, publish,
                                                                     make_submission):
    pub = await publish("CT", "774007", "ACC-Y")
    # Same manifest, published again under another study UID in its referenceIdList.
    other = dc_replace(
        make_submission(), kos=pub.submission.kos, kos_uid=pub.kos_uid + ".1",
        reference_ids=(ReferenceId("ACC-Z", ACCESSION_ROOT, ReferenceType.ACCESSION),
                       ReferenceId("1.2.3.999", "1.2.3.4.5.6", ReferenceType.STUDY_UID)))
    await client.publish(other)
    exams = by_accession(await list_exams(client, PATIENT, consumer))
    assert exams["ACC-Y"].problem is None
    assert exams["ACC-Z"].problem is not None and exams["ACC-Z"].series == ()


async def test_ip_literal_retrieve_url_is_not_offered(client, consumer, publish):
    await publish("CT", "774007", "ACC-IP", public_url="https://127.0.0.1:8443")
    [exam] = (await list_exams(client, PATIENT, consumer)).exams
    assert exam.problem is None and not exam.viewable
    assert all(s.target is None and "IP address" in (s.url_problem or "") for s in exam.series)
    lab = UrlPolicy(allow_ip_literals=True)
    [exam] = (await list_exams(client, PATIENT, consumer, url_policy=lab)).exams
    assert exam.viewable and {s.target.port for s in exam.series} == {8443}


async def test_whitelist_hook_decides_the_hosts(client, consumer, three_exams):
    nobody = UrlPolicy(host_allowed=lambda host: False)
    exams = (await list_exams(client, PATIENT, consumer, url_policy=nobody)).exams
    assert exams and not any(x.viewable for x in exams)
    seen: list[str] = []
    listed = UrlPolicy(host_allowed=lambda host: seen.append(host) or host.startswith("db1."))
    exams = (await list_exams(client, PATIENT, consumer, url_policy=listed)).exams
    assert all(x.viewable for x in exams) and set(seen) == {"db1.test.mesimagesmedicales.fr"}


def _as_report(kos_xml: bytes, unique_id: str) -> bytes:
    """A CR DocumentEntry made from a stored KOS entry: class 11, LOINC 18748-4, PDF."""
    eo = etree.fromstring(kos_xml)
    eo.set("mimeType", "application/pdf")
    rim = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
    for c in eo.iter(f"{{{rim}}}Classification"):
        node = c.get("nodeRepresentation")
        if node == "31":
            c.set("nodeRepresentation", "11")
        elif node == "IMG-KOS":
            c.set("nodeRepresentation", "18748-4")
            c.find(f"{{{rim}}}Slot/{{{rim}}}ValueList/{{{rim}}}Value").text = \
                "2.16.840.1.113883.6.1"
        elif node == "1.2.840.10008.5.1.4.1.1.88.59":
            c.set("nodeRepresentation", "urn:ihe:iti:xds-sd:pdf:2008")
    for e in eo.iter(f"{{{rim}}}ExternalIdentifier"):
        if e.get("identificationScheme") == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab":
            e.set("value", unique_id)
    return etree.tostring(eo)


async def test_reports_are_paired_with_their_exam_by_accession(client, consumer, simulator,
                                                               three_exams):
    # The simulator only takes imaging submissions through ITI-41 (the CR would come from the
    # RIS's own software), so report entries are placed in its registry directly.
    ct, mr, _ = three_exams
    kos_entry = simulator.entries[simulator.by_unique[ct.kos_uid]]
    orphan_source = simulator.entries[simulator.by_unique[mr.kos_uid]]
    for source, uid in ((kos_entry, "1.2.250.1.999.77.1"), (orphan_source, "1.2.250.1.999.77.2")):
        euid = "urn:uuid:" + str(uuid.uuid4())
        xml = _as_report(source.xml, uid).replace(source.entry_uuid.encode(), euid.encode())
        simulator.entries[euid] = dc_replace(source, entry_uuid=euid, unique_id=uid, xml=xml,
                                             mime_type="application/pdf", content=b"%PDF-1.4",
                                             class_code=("11", "1.2.250.1.213.1.1.4.1"))
        simulator.by_unique[uid] = euid
    listing = await list_exams(client, PATIENT, consumer)
    exams = by_accession(listing)
    assert [r.unique_id for r in exams["ACC-CT-1"].reports] == ["1.2.250.1.999.77.1"]
    assert exams["ACC-CT-1"].reports[0].mime_type == "application/pdf"
    assert [r.unique_id for r in exams["ACC-MR-2"].reports] == ["1.2.250.1.999.77.2"]
    assert listing.unpaired_reports == ()
    assert len(listing.exams) == 2           # a report is not an exam
    # Filtering on another exam's accession keeps only that exam's report.
    only_ct = await list_exams(client, PATIENT, consumer, accession="ACC-CT-1")
    assert [x.accession for x in only_ct.exams] == ["ACC-CT-1"]
    assert only_ct.unpaired_reports == ()
    # An exam left out by a filter takes its report with it.
    mr_day = f"{mr.submission.service_start.astimezone():%Y%m%d}"
    only_mr = await list_exams(client, PATIENT, consumer, study_date=mr_day)
    assert [x.accession for x in only_mr.exams] == ["ACC-MR-2"]
    assert len(only_mr.exams[0].reports) == 1 and only_mr.unpaired_reports == ()


async def test_report_without_a_visible_exam_is_listed_apart(client, consumer, simulator,
                                                             three_exams):
    masked = three_exams[2]
    source = simulator.entries[simulator.by_unique[masked.kos_uid]]
    euid = "urn:uuid:" + str(uuid.uuid4())
    xml = _as_report(source.xml, "1.2.250.1.999.77.3").replace(b"MASQUE_PS", b"INVISIBLE_PATIENT")
    xml = xml.replace(source.entry_uuid.encode(), euid.encode())
    simulator.entries[euid] = dc_replace(source, entry_uuid=euid, unique_id="1.2.250.1.999.77.3",
                                         xml=xml, class_code=("11", "1.2.250.1.213.1.1.4.1"))
    listing = await list_exams(client, PATIENT, consumer)
    assert [r.unique_id for r in listing.unpaired_reports] == ["1.2.250.1.999.77.3"]
    assert [r.accession for r in listing.unpaired_reports] == ["ACC-CT-3"]


async def test_every_listing_is_audited_without_patient_data_in_detail(client, consumer,
                                                                       simulator, three_exams,
                                                                       tmp_path):
    db = Database(tmp_path / "state.db")
    await list_exams(client, PATIENT, consumer, modality="CT", db=db)
    simulator.add_patient(PATIENT.xds, opposition="unknown")
    await list_exams(client, PATIENT, consumer, db=db)
    rows = db.query("SELECT actor, action, interface, patient_id, outcome, detail "
                    "FROM audit_events ORDER BY id")
    assert [(r["actor"], r["action"], r["interface"], r["patient_id"], r["outcome"])
            for r in rows] == [
        ("810002909371", "dmp.list", "dmp", PATIENT.ins, "ok"),
        ("810002909371", "dmp.list", "dmp", PATIENT.ins, "consent-required")]
    assert "exams=1" in rows[0]["detail"] and "modality" in rows[0]["detail"]
    assert "structure=10B0000001" in rows[0]["detail"]
    assert all(PATIENT.ins not in r["detail"] and "Alice" not in r["detail"] for r in rows)


async def test_audit_failure_withholds_the_listing(client, consumer, three_exams, tmp_path):
    db = Database(tmp_path / "state.db")
    db.execute("DROP TABLE audit_events")
    with pytest.raises(Exception) as e:
        await list_exams(client, PATIENT, consumer, db=db)
    assert "audit_events" in str(e.value)


async def test_caller_errors_are_refused_before_any_exchange(client, consumer, simulator):
    box_alone = dc_replace(consumer, mode=AuthMode.INDIRECTE)
    with pytest.raises(ValueError, match="Pro Santé Connect"):
        await list_exams(client, PATIENT, box_alone)
    for bad in ({"modality": "ct; drop"}, {"study_date": "2024-01-01"},
                {"study_date": "20240230"}, {"study_date": "20240102-20240101"},
                {"accession": " "}, {"region": "a b"},
                {"accession": ReferenceId("1.2.3", "1.2.3", ReferenceType.STUDY_UID)}):
        with pytest.raises(ValueError):
            await list_exams(client, PATIENT, consumer, **bad)
    assert simulator.stats == {}
