"""DICOM JSON metadata of one instance, computed once at ingest (PS3.18 F.2).

Bulk data (PixelData and any binary element over the threshold) is replaced by a ``BulkDataURI``.
URIs are stored relative to a placeholder base, :data:`BASE`, that the DICOMweb server replaces with
its own root when it serves the metadata: the same store answers on several host names.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

BASE = "{{DICOMWEB_BASE}}"
BULK_THRESHOLD = 1024  # bytes; smaller binary values are inlined (base64)


def instance_json(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The instance's DICOM JSON object as compact text."""
    instance_root = f"{BASE}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"

    def bulk(elem: DataElement) -> str:
        tag = f"{elem.tag:08X}"
        if tag == "7FE00010":
            # PixelData: OHIF and others fetch it per frame; point at the frames resource.
            return f"{instance_root}/frames/1"
        return f"{instance_root}/bulkdata/{tag}"

    d: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                                       bulk_data_element_handler=bulk)
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)
