"""The certificate chain a TLS peer needs: the leaf read from the token, then its issuers.

The token stores only the leaf next to its key; the issuing CAs come from the configured trust
anchors (``hsm.trust_anchors``). The result is written as a PEM file for ``load_cert_chain``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def chain_for(leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``leaf`` followed by each issuer found in ``pool`` up to (excluding) a self-signed root."""
    chain = [leaf]
    current = leaf
    for _ in range(8):  # IGC-Santé chains are 3 deep; the bound stops issuer loops
        if current.issuer == current.subject:
            break
        issuer = next((c for c in pool if c.subject == current.issuer and c != current), None)
        if issuer is None or issuer.issuer == issuer.subject:
            break
        chain.append(issuer)
        current = issuer
    return chain


def write_chain(path: Path, certs: Sequence[x509.Certificate]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
