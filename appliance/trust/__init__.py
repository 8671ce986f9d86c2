"""Who may read patient data: the national whitelist of peer boxes, viewer sessions, and the
one guard every DICOMweb request goes through (``guard.py``)."""
