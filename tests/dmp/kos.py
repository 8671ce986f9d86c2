"""A Key Object Selection document for the DMP tests and benchmark (pydicom), n instances."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def make_kos(n_instances: int = 3, *, sop_uid: str | None = None, study_uid: str | None = None
             ) -> tuple[bytes, str]:
    """(DICOM file bytes, SOP Instance UID) of a KOS referencing ``n_instances`` CT images."""
    sop_uid = sop_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    ds = Dataset()
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.PatientID = "248098765432112"
    ds.PatientName = "TEST^PATIENT"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.RetrieveURL = f"https://db1.example.org/dicom-web/studies/{study_uid}/series/" \
                         f"{series.SeriesInstanceUID}"
    refs = []
    for _ in range(n_instances):
        r = Dataset()
        r.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        r.ReferencedSOPInstanceUID = generate_uid()
        refs.append(r)
    series.ReferencedSOPSequence = Sequence(refs)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), sop_uid


def sample_submission(n_instances: int = 3, **overrides: Any) -> Any:
    """A complete, valid ``KosSubmission`` for the test patient (tests and the benchmark)."""
    from appliance.dmp import (Code, KosSubmission, Organization, PatientId, PatientInfo,
                               Person, ReferenceId, ReferenceType)

    kos, uid = make_kos(n_instances)
    now = datetime.now(UTC)
    s = KosSubmission(
        patient=PatientId("248098765432112", "1.2.250.1.213.1.4.10"),
        patient_info=PatientInfo("PAT-TEST", "Alice", "19800102", "F"),
        author=Person("899700367909", "DOC0036790", "KIT"),
        institution=Organization("CABINET RADIOLOGIE TEST", "499700367909006"),
        legal_authenticator=Person("899700367909", "DOC0036790", "KIT"),
        facility_type=Code("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel"),
        practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
        event_codes=(Code("CT", "1.2.250.1.213.1.1.5.618", "Computed Tomography"),
                     Code("774007", "1.2.250.1.213.1.1.5.695", "Tête et cou")),
        reference_ids=(
            ReferenceId("ACC-0001", "1.2.250.1.999.2.1", ReferenceType.ACCESSION),
            ReferenceId("1.2.3.4.5.6.7", "1.2.3.4.5.6", ReferenceType.STUDY_UID),
            ReferenceId("ORD-0001", "1.2.250.1.999.2.2", ReferenceType.ORDER)),
        kos=kos, kos_uid=uid, creation_time=now,
        service_start=now - timedelta(hours=1), service_stop=now - timedelta(minutes=30),
    )
    return replace(s, **overrides) if overrides else s
