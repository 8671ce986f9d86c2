"""Local DICOMweb read side (QIDO-RS, WADO-RS instance and series metadata)."""

from .server import make_app

__all__ = ["make_app"]
