"""IOCM rejection notes: the generator writes them as a PACS would; the box recognises them."""

from __future__ import annotations

import io
from dataclasses import replace

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from appliance.dicom.kos import (
    INCORRECT_WORKLIST_ENTRY,
    MANIFEST,
    REJECTED_FOR_PATIENT_SAFETY,
    REJECTED_FOR_QUALITY,
    REJECTION_TITLES,
    RETENTION_EXPIRED,
    Code,
    KosBuildError,
    KosParseError,
    RejectionRequest,
    build_kos,
    build_rejection_note,
    parse_kos,
    rejection_note,
)
from appliance.dicom.uids import new_uid

from .conftest import CT_IMAGE, make_instances, study


def rejection_request(reason: Code = REJECTED_FOR_QUALITY, shape=(("CT", 3), ("MR", 2))):
    return RejectionRequest(patient_id="IPP000123", patient_name="DUPONT^Hélène",
                            study=study(), rejected=make_instances(shape), reason=reason)


def ct_image_bytes() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = new_uid()
    ds.PatientID = "IPP000123"
    ds.StudyInstanceUID = new_uid()
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_the_four_cid_7011_titles():
    assert {c.value for c in REJECTION_TITLES} == {"113001", "113037", "113038", "113039"}


@pytest.mark.parametrize(
    "reason",
    [REJECTED_FOR_QUALITY, REJECTED_FOR_PATIENT_SAFETY, INCORRECT_WORKLIST_ENTRY, RETENTION_EXPIRED],
    ids=lambda c: c.value,
)
def test_generated_note_is_valid_and_recognised(reason, dciodvfy):
    req = rejection_request(reason)
    built = build_rejection_note(req)
    verdict = dciodvfy(built.data)
    assert verdict.errors == [], verdict.output
    note = rejection_note(built.data)
    assert note is not None
    assert note.reason == reason
    assert note.sop_instance_uid == built.sop_instance_uid
    assert note.patient_id == "IPP000123"
    assert note.study_uids == {req.study.study_uid}
    assert note.rejected_sop_instance_uids == {i.sop_instance_uid for i in req.rejected}
    assert {s.series_uid for s in note.rejected} == {i.series_uid for i in req.rejected}
    assert all(s.retrieve_url is None for s in note.rejected)


def test_note_received_as_a_dataset_like_the_scp_gets_it():
    req = rejection_request(shape=(("CT", 2),))
    ds = pydicom.dcmread(io.BytesIO(build_rejection_note(req).data))
    del ds.file_meta  # a C-STORE handler sees the data set without a file meta header
    note = rejection_note(ds)
    assert note is not None and note.reason == REJECTED_FOR_QUALITY
    assert note.rejected_sop_instance_uids == {i.sop_instance_uid for i in req.rejected}


def test_a_manifest_is_not_a_rejection_note(make_request):
    assert rejection_note(build_kos(make_request()).data) is None


def test_an_image_is_not_a_rejection_note():
    assert rejection_note(ct_image_bytes()) is None


def test_parse_kos_refuses_an_image_with_a_clear_error():
    with pytest.raises(KosParseError, match="not a Key Object Selection Document"):
        parse_kos(ct_image_bytes())


def test_garbage_is_an_error_not_none():
    with pytest.raises(KosParseError):
        rejection_note(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(KosParseError):
        rejection_note(b"not dicom at all")


def test_rejection_note_without_evidence_is_an_error():
    ds = pydicom.dcmread(io.BytesIO(build_rejection_note(rejection_request()).data))
    del ds.CurrentRequestedProcedureEvidenceSequence
    with pytest.raises(KosParseError, match="CurrentRequestedProcedureEvidenceSequence"):
        rejection_note(ds)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_rejection_note_with_a_bad_referenced_uid_is_an_error():
    ds = pydicom.dcmread(io.BytesIO(build_rejection_note(rejection_request()).data))
    ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.x"
    with pytest.raises(KosParseError, match="ReferencedSOPInstanceUID"):
        rejection_note(ds)


def test_generator_refuses_a_title_outside_cid_7011():
    with pytest.raises(KosBuildError, match="reason"):
        build_rejection_note(replace(rejection_request(), reason=MANIFEST))


def test_generator_refuses_an_empty_rejection():
    with pytest.raises(KosBuildError, match="rejected"):
        build_rejection_note(replace(rejection_request(), rejected=[]))


def test_a_compressed_image_is_not_a_rejection_note():
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(ct_image_bytes()))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 2, 8, 1
    ds.PixelData = encapsulate([b"\xff\xd8fakejpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert rejection_note(buf.getvalue()) is None


def test_a_truncated_image_is_an_error():
    with pytest.raises(KosParseError):
        rejection_note(ct_image_bytes()[:-3])


def test_an_image_larger_than_the_kos_limit_is_not_a_rejection_note():
    image = ct_image_bytes()
    assert rejection_note(image, max_bytes=len(image) - 1) is None
    note = build_rejection_note(rejection_request()).data
    with pytest.raises(KosParseError, match="limit"):
        rejection_note(note, max_bytes=len(note) - 1)


def test_parsing_from_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    note = build_rejection_note(rejection_request()).data
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: rejection_note(note), range(64)))
    assert all(r is not None and r.reason == REJECTED_FOR_QUALITY for r in results)
    import warnings

    assert warnings.showwarning.__module__ == "warnings"  # filters and hook restored
