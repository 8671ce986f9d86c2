"""DICOM side of the box: KOS manifests, UIDs, and (later) the PACS SCU and the C-STORE SCP."""
