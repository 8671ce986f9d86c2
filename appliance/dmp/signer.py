"""What the DMP module needs from a key: a small protocol, so it does not depend on keys internals.

The keys layer (``appliance.keys.Token``) signs on the token; :class:`TokenSigner` adapts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

DS = "http://www.w3.org/2000/09/xmldsig#"


@dataclass(frozen=True)
class Algorithm:
    name: str
    signature_uri: str
    hash: Callable[[bytes], Any]


@dataclass(frozen=True)
class Digest:
    name: str
    uri: str
    hash: Callable[[bytes], Any]

    def of(self, data: bytes) -> bytes:
        return bytes(self.hash(data).digest())


SIGNATURE_ALGORITHMS = {
    "rsa-sha256": Algorithm("rsa-sha256", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                            hashlib.sha256),
    "rsa-sha1": Algorithm("rsa-sha1", DS + "rsa-sha1", hashlib.sha1),
}
DIGEST_ALGORITHMS = {
    "sha256": Digest("sha256", "http://www.w3.org/2001/04/xmlenc#sha256", hashlib.sha256),
    "sha1": Digest("sha1", DS + "sha1", hashlib.sha1),
}


class Signer(Protocol):
    """A private key that stays in its token, with its certificate."""

    @property
    def algorithm(self) -> str:  # a key of SIGNATURE_ALGORITHMS
        ...

    @property
    def certificate(self) -> x509.Certificate:
        ...

    def sign(self, data: bytes) -> bytes:
        """The raw PKCS#1 v1.5 signature of ``data`` (the token hashes it)."""
        ...


class _Token(Protocol):
    def sign(self, key_label: str, data: bytes, algorithm: str = ...) -> bytes: ...

    def certificate(self, label: str) -> x509.Certificate: ...


class TokenSigner:
    """A :class:`Signer` over an ``appliance.keys.Token``-shaped object and one key label."""

    def __init__(self, token: _Token, key_label: str, algorithm: str = "rsa-sha256",
                 cert_label: str | None = None) -> None:
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise ValueError(f"unknown signature algorithm {algorithm!r}")
        self._token = token
        self._label = key_label
        self._algorithm = algorithm
        self._cert = token.certificate(cert_label or key_label)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    def sign(self, data: bytes) -> bytes:
        return self._token.sign(self._label, data, algorithm=self._algorithm)
