"""Certificate checks for the box's own certificates: chain to the configured trust anchors,
key usage / EKU per use, validity and the expiry watch (warning at 30 days, error at 7).

Path building is written here on purpose: ``cryptography``'s verifier enforces the Web PKI profile
(SAN required, one EKU per verifier) which IGC-Santé ORG signature certificates do not follow. The
signature of each link is still checked by ``cryptography`` (``verify_directly_issued_by``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateRefused

WARN_DAYS = 30
ERROR_DAYS = 7
MAX_DEPTH = 6

#: use -> (key usages of which one is required, EKU required when the certificate has an EKU)
USES: dict[str, tuple[tuple[str, ...], x509.ObjectIdentifier | None]] = {
    "tls-client": (("digital_signature",), ExtendedKeyUsageOID.CLIENT_AUTH),
    "tls-server": (("digital_signature", "key_encipherment"), ExtendedKeyUsageOID.SERVER_AUTH),
    # Signature of DMP tokens and submissions: IGC-Santé ORG signature certificates carry
    # nonRepudiation (contentCommitment); the authentication certificate does not.
    "signature": (("content_commitment",), None),
}


def load_pem_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for p in paths:
        try:
            out.extend(x509.load_pem_x509_certificates(Path(p).read_bytes()))
        except (OSError, ValueError) as e:
            raise CertificateRefused(f"cannot read certificates from {p}: {e}") from None
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _self_signed(c: x509.Certificate) -> bool:
    if c.subject != c.issuer:
        return False
    try:
        c.verify_directly_issued_by(c)
        return True
    except (InvalidSignature, ValueError, TypeError):  # bad or unsupported signature
        return False


def _is_ca(c: x509.Certificate) -> bool:
    try:
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca and ku.key_cert_sign


def describe(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string()


def check_validity(c: x509.Certificate, at: dt.datetime | None = None) -> None:
    at = at or _now()
    if at < c.not_valid_before_utc:
        raise CertificateRefused(f"certificate {describe(c)} is not valid before "
                                 f"{c.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if at > c.not_valid_after_utc:
        raise CertificateRefused(f"certificate {describe(c)} expired on "
                                 f"{c.not_valid_after_utc:%Y-%m-%d %H:%M}Z")


def check_usage(c: x509.Certificate, use: str) -> None:
    """Refuse a certificate whose KeyUsage / EKU does not allow ``use`` (see :data:`USES`)."""
    if use not in USES:
        raise ValueError(f"unknown certificate use {use!r} (one of {', '.join(USES)})")
    bits, eku_needed = USES[use]
    try:
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateRefused(f"certificate {describe(c)} has no KeyUsage; refused for "
                                 f"{use}") from None
    if not any(getattr(ku, b) for b in bits):
        raise CertificateRefused(f"certificate {describe(c)} is not for {use}: KeyUsage lacks "
                                 f"{' or '.join(bits)}")
    if eku_needed is not None:
        try:
            eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return  # no EKU: no restriction (RFC 5280 4.2.1.12)
        if eku_needed not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise CertificateRefused(f"certificate {describe(c)} is not for {use}: "
                                     f"ExtendedKeyUsage lacks {eku_needed._name}")


def validate_chain(leaf: x509.Certificate, anchors_and_intermediates: Sequence[x509.Certificate],
                   at: dt.datetime | None = None) -> list[x509.Certificate]:
    """The chain leaf -> ... -> anchor, each link's signature, CA flags and dates checked.

    Self-signed certificates in ``anchors_and_intermediates`` are the trust anchors; the others
    are intermediates available to build the path. Raises :class:`CertificateRefused`.
    """
    at = at or _now()
    anchors = [c for c in anchors_and_intermediates if _self_signed(c)]
    inter = [c for c in anchors_and_intermediates if not _self_signed(c)]
    if not anchors:
        raise CertificateRefused("no trust anchor configured (hsm.trust_anchors)")
    chain = [leaf]
    check_validity(leaf, at)
    cur = leaf
    for _ in range(MAX_DEPTH):
        for cand in anchors + inter:
            if cand.subject != cur.issuer or cand in chain:
                continue
            try:
                cur.verify_directly_issued_by(cand)
            except (InvalidSignature, ValueError, TypeError):
                continue  # same name, other key: try the next candidate
            if not _is_ca(cand):
                raise CertificateRefused(f"issuer {describe(cand)} is not a CA certificate")
            check_validity(cand, at)
            chain.append(cand)
            if cand in anchors:
                return chain
            cur = cand
            break
        else:
            raise CertificateRefused(f"certificate {describe(cur)} is not issued by a configured "
                                     f"trust anchor (issuer {cur.issuer.rfc4514_string()})")
    raise CertificateRefused(f"certificate chain of {describe(leaf)} is too long")


def matches_key(c: x509.Certificate, public_key: object) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return c.public_key().public_bytes(*fmt) == public_key.public_bytes(*fmt)  # type: ignore


def structure_id(c: x509.Certificate) -> str | None:
    """The structure identifier an IGC-Santé ORG certificate carries in ``OU``."""
    ous = c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if ous else None


@dataclass(frozen=True)
class Expiry:
    level: str  # "ok", "warning" (<= 30 days), "error" (<= 7 days), "expired"
    days_left: float
    not_after: dt.datetime


def expiry(c: x509.Certificate, at: dt.datetime | None = None) -> Expiry:
    at = at or _now()
    days = (c.not_valid_after_utc - at).total_seconds() / 86400
    level = ("expired" if days < 0 else "error" if days <= ERROR_DAYS
             else "warning" if days <= WARN_DAYS else "ok")
    return Expiry(level, days, c.not_valid_after_utc)


def check_for_use(c: x509.Certificate, use: str, trust: Sequence[x509.Certificate] = (),
                  at: dt.datetime | None = None) -> list[x509.Certificate]:
    """Everything the box checks before using one of its own certificates for ``use``."""
    check_usage(c, use)
    if trust:
        return validate_chain(c, trust, at)
    check_validity(c, at)
    return [c]
