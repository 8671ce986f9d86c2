"""Local DICOMweb read side (QIDO-RS, WADO-RS instance and series metadata)."""

from .server import AccessLogger, make_app

__all__ = ["AccessLogger", "make_app"]
