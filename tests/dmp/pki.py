"""Certificates the DMP tests need beyond the shared test PKI (``appliance.keys.testpki``).

The box's keys (``auth`` for TLS, ``sign`` for VIHF/XAdES) are on SoftHSM, from the keys layer.
The simulated DMP is another party: its server key is a file key generated at test time, with a
certificate from the test PKI's server CA, so the box verifies it like the real DMP's.
"""

from __future__ import annotations

import glob
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from appliance.keys.testpki import TestPki


def name(cn: str, ou: str | None = None, o: str = "TEST") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@dataclass
class SimulatorCerts:
    cert: Path
    key: Path
    client_ca: Path      # CA bundle that issues the boxes' TLS client certificates


def simulator_certs(pki: TestPki, d: Path) -> SimulatorCerts:
    d.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), name("dmp-simulator.test"), "tls-server", issuer="server",
                     hosts=["127.0.0.1"])
    server_ca = x509.load_pem_x509_certificate(pki.server_ca.read_bytes())
    (d / "server.pem").write_bytes(pem(cert, server_ca))
    return SimulatorCerts(d / "server.pem", write_key(d / "server.key", key), pki.bundle)


def provider_missing() -> str | None:
    if not glob.glob("/usr/lib/*/ossl-modules/pkcs11.so") and not glob.glob(
            "/usr/lib*/ossl-modules/pkcs11.so"):
        return "pkcs11-provider not installed (needed for TLS with the token's auth key)"
    return None


def softhsm_missing() -> str | None:
    from appliance.keys import softhsm
    if softhsm.module_path() is None or shutil.which("softhsm2-util") is None:
        return "SoftHSM2 not installed (Debian package softhsm2)"
    return None


_CONTEXTS: dict[tuple[int, int], ssl.SSLContext] = {}


def box_client_context(pki: TestPki, index: int = 0) -> ssl.SSLContext:
    """The box's TLS client context: ORG auth key on the token, through pkcs11-provider.

    One per process and structure, kept alive, as the daemon does. Seen with pkcs11-provider 1.0
    and SoftHSM: when a context holding a token key is freed while another context holding the
    same key is alive, the survivor's next handshake fails ("EVP lib", PIN prompt).
    """
    key = (id(pki), index)
    if key not in _CONTEXTS:
        from appliance.keys import tls
        _CONTEXTS[key] = tls.client_context(pki.hsm_config(index), "auth",
                                            pki.structures[index].auth_cert, pki.bundle)
    return _CONTEXTS[key]


def anonymous_client_context(pki: TestPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.bundle))
