"""PKCS#10 certificate requests signed by the token (the request a structure files with IGC-Santé).

``cryptography`` can only sign a CSR with a key object it holds, so the request is assembled with
asn1crypto (already a dependency of python-pkcs11) and its CertificationRequestInfo is signed by
the token. The result is checked with ``cryptography`` before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from asn1crypto import csr as acsr
from asn1crypto import keys as akeys
from asn1crypto import pem
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import KeysError
from .token import Token


def parse_subject(text: str) -> x509.Name:
    """``"CN=…,OU=<structure id>,O=…,ST=…,C=FR"`` (RFC 4514, most specific first)."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as e:
        raise KeysError(f"bad subject {text!r}: {e}") from None
    if not name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        raise KeysError(f"bad subject {text!r}: a CN is required")
    return name


def make_csr(token: Token, key_label: str, subject: x509.Name,
             dns_names: Sequence[str] = ()) -> bytes:
    """A PEM CSR for token key ``key_label``; the token signs it (SHA-256)."""
    pub = token.public_key(key_label)
    spki = pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    attributes = []
    if dns_names:
        san = ax509.GeneralNames([ax509.GeneralName(name="dns_name", value=d) for d in dns_names])
        attributes.append({"type": "extension_request", "values": [[
            {"extn_id": "subject_alt_name", "critical": False, "extn_value": san}]]})
    info = acsr.CertificationRequestInfo({
        "version": "v1",
        "subject": ax509.Name.load(subject.public_bytes()),
        "subject_pk_info": akeys.PublicKeyInfo.load(spki),
        "attributes": attributes,
    })
    if isinstance(pub, ec.EllipticCurvePublicKey):
        algorithm, sig_alg = "ecdsa-sha256", "sha256_ecdsa"
    else:
        algorithm, sig_alg = "rsa-sha256", "sha256_rsa"
    signature = token.sign(key_label, info.dump(), algorithm)
    req = acsr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": sig_alg},
        "signature": signature,
    })
    out = pem.armor("CERTIFICATE REQUEST", req.dump())
    parsed = x509.load_pem_x509_csr(out)
    if not parsed.is_signature_valid:
        raise KeysError(f"the token produced an invalid signature for key {key_label!r}")
    return out
