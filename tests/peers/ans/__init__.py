"""Test ANS: signs ListeBlancheDRIM-M lists like the ANS (own test PKI) and serves them and
their CRLs over HTTP on loopback, with faults on demand."""

from .pki import AnsPki, make_pki
from .server import AnsPeer
from .signer import build_list, domain_for_certificate, sign, signed_list

__all__ = ["AnsPeer", "AnsPki", "build_list", "domain_for_certificate", "make_pki", "sign",
           "signed_list"]
