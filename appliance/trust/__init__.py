"""Trust in peers: the national whitelist of DRIM-M boxes (ANS ``ListeBlancheDRIM-M``)."""

from .whitelist import Domain, Whitelist, WhitelistRefused, verify

__all__ = ["Domain", "Whitelist", "WhitelistRefused", "verify"]
