"""A Key Object Selection document for the DMP tests and benchmark (pydicom), n instances."""

from __future__ import annotations

import io

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
