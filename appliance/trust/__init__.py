"""Who may read patient data: the national whitelist of DRIM-M boxes (ANS
``ListeBlancheDRIM-M``: ``whitelist.py``, ``crl.py``, ``service.py``), viewer sessions
(``sessions.py``), what a published KOS opens (``published.py``), and the one guard every
DICOMweb request goes through (``guard.py``)."""

from .whitelist import Domain, Whitelist, WhitelistRefused, verify

__all__ = ["Domain", "Whitelist", "WhitelistRefused", "verify"]
