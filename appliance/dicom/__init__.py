"""The DICOM side of the box: its SCP (scp.py), its link to the site PACS (scu.py), KOS
manifests (kos.py) and UIDs (uids.py)."""
