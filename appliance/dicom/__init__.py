"""The box as a DICOM node: its SCP (scp.py) and its link to the site PACS (scu.py)."""
