"""Errors of the keys layer. Messages are for operators: they say what is wrong and what to do,
and never contain a PIN."""

from __future__ import annotations


class KeysError(Exception):
    """Base class: anything the keys layer refuses or cannot do."""


class TokenAbsent(KeysError):
    """The PKCS#11 module is there but the token (card, HSM partition) is not."""


class ModuleError(KeysError):
    """The PKCS#11 module cannot be loaded (wrong path, not a PKCS#11 library)."""


class PinError(KeysError):
    """The PIN was refused, is locked, or the box stopped trying to avoid locking the card."""


class PinFileError(KeysError):
    """The PIN file is missing, empty or readable by other users."""


class KeyNotFound(KeysError):
    """No private key (or certificate) with that label on the token."""


class CertificateRefused(KeysError):
    """A certificate that fails a check: chain, validity dates, key usage, or not matching the
    key."""
