"""Synthetic studies for tests, benchmarks and the demo: realistic tags and sizes, fresh UIDs.

CT: 512x512 16-bit slices (about 525 KB each); MR: 256x256 16-bit. Pixel data is a smooth phantom
(so compressed syntaxes behave like real images, not like noise or zeros). Optional fixed Study
UID / accession / PatientID let a test line a study up with an HL7 report.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

_KINDS = {
    "CT": dict(sop=CTImageStorage, size=512, desc="CT THORAX AVEC INJECTION", body="CHEST",
               thick=1.25),
    "MR": dict(sop=MRImageStorage, size=256, desc="IRM CEREBRALE", body="HEAD", thick=3.0),
}


def _phantom(size: int, z: float, kind: str) -> np.ndarray:
    y, x = np.mgrid[-1:1:complex(size), -1:1:complex(size)]
    body = (x**2 / 0.8 + y**2 / 0.55) < 1.0
    organ = ((x - 0.3) ** 2 + (y + 0.1) ** 2) < (0.15 + 0.05 * np.sin(z * 6.0)) ** 2
    img = np.where(body, 1040, 24).astype(np.int32)
    img = img + np.where(organ, 300, 0) + (60 * np.cos(x * 9 + z) * body).astype(np.int32)
    if kind == "MR":
        img = img // 2
    return img.astype(np.uint16)


def synthetic_study(kind: str = "CT", slices: int = 10, *, out_dir: Path | str,
                    study_uid: str | None = None, accession: str | None = None,
                    patient_id: str | None = None, patient_name: str = "DEMO^PATIENT",
                    series: int = 1, transfer_syntax: str = ExplicitVRLittleEndian,
                    uid_prefix: str | None = None) -> list[Path]:
    """Write ``series`` series of ``slices`` Part 10 files each; returns their paths in order."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}")
    if transfer_syntax != ExplicitVRLittleEndian:
        # Compressed variants are made by pydicom's encoders where installed.
        pass
    k = _KINDS[kind]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(prefix=uid_prefix)
    now = dt.datetime.now()
    paths: list[Path] = []
    for s in range(series):
        series_uid = generate_uid(prefix=uid_prefix)
        for i in range(slices):
            sop_uid = generate_uid(prefix=uid_prefix)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = k["sop"]
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = k["sop"]
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.AccessionNumber = accession or f"ACC{now:%y%m%d}{abs(hash(study_uid)) % 10**6:06d}"
            ds.Modality = kind
            ds.Manufacturer = "DRIMBOX SYNTHETIC"
            ds.InstitutionName = "CENTRE DE RADIOLOGIE DEMO"
            ds.ReferringPhysicianName = "MEDECIN^TRAITANT"
            ds.StudyDescription = k["desc"]
            ds.SeriesDescription = f"{k['desc']} S{s + 1}"
            ds.PatientName = patient_name
            ds.PatientID = patient_id or f"IPP{abs(hash(study_uid)) % 10**8:08d}"
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.BodyPartExamined = k["body"]
            ds.SliceThickness = k["thick"]
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [-250.0, -250.0, -i * k["thick"]]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else study_uid
            ds.SliceLocation = -i * k["thick"]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = k["size"]
            ds.PixelSpacing = [500.0 / k["size"]] * 2
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            if kind == "CT":
                ds.RescaleIntercept = -1024
                ds.RescaleSlope = 1
                ds.RescaleType = "HU"
                ds.WindowCenter = 40
                ds.WindowWidth = 400
                ds.KVP = 120
            else:
                ds.WindowCenter = 300
                ds.WindowWidth = 600
                ds.MagneticFieldStrength = 1.5
                ds.RepetitionTime = 500
                ds.EchoTime = 15
            ds.PixelData = _phantom(k["size"], i / max(slices, 1) * 3.0, kind).tobytes()
            if transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(UID(transfer_syntax))
            path = out / f"{kind}_{s + 1:02d}_{i + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
