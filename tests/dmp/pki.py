"""Test PKI for the DMP tests, made at test time (nothing here is ever committed as a key file).

Chain shaped like IGC-Santé: a root CA issues the organisation's signature certificate (its key is
generated inside SoftHSM and never leaves it), a TLS client certificate and the simulator's server
certificate. [until the keys branch lands] the TLS client key is a file key generated here: the
stdlib ``ssl`` module needs pkcs11-provider to use a token key, which is the keys layer's job.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def _name(cn: str, ou: str | None = None, o: str = "CABINET TEST DRIMBOX") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def issue(ca_key: rsa.RSAPrivateKey | None, ca_name: x509.Name | None, subject: x509.Name,
          public_key: rsa.RSAPublicKey, *, ca: bool = False, eku: list[x509.ObjectIdentifier] = (),
          ip: str | None = None, self_key: rsa.RSAPrivateKey | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(ca_name or subject).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                          False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                            critical=False)
    signer = ca_key or self_key
    assert signer is not None
    return b.sign(signer, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Pki:
    dir: Path
    ca: x509.Certificate
    ca_key: rsa.RSAPrivateKey
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def leaf(self, public_key: rsa.RSAPublicKey, cn: str, ou: str) -> x509.Certificate:
        return issue(self.ca_key, self.ca.subject, _name(cn, ou), public_key)


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(65537, 2048)
    ca_name = _name("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS", o="TEST ANS")
    ca = issue(None, None, ca_name, ca_key.public_key(), ca=True, self_key=ca_key)
    srv_key = rsa.generate_private_key(65537, 2048)
    srv = issue(ca_key, ca_name, _name("dmp-simulator.test"), srv_key.public_key(),
                eku=[ExtendedKeyUsageOID.SERVER_AUTH], ip="127.0.0.1")
    cli_key = rsa.generate_private_key(65537, 2048)
    cli = issue(ca_key, ca_name, _name("DRIMbox", "499700367909006"), cli_key.public_key(),
                eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {}
    for name, data in {"ca.pem": pem(ca), "server.pem": pem(srv), "server.key": key_pem(srv_key),
                       "client.pem": pem(cli), "client.key": key_pem(cli_key)}.items():
        p = d / name
        p.write_bytes(data)
        p.chmod(0o600)
        files[name] = p
    return Pki(d, ca, ca_key, files["ca.pem"], files["server.pem"], files["server.key"],
               files["client.pem"], files["client.key"])


class SoftHsmToken:
    """A SoftHSM2 token with the ``appliance.keys.Token`` shape (``sign``, ``certificate``), so
    the DMP tests sign on a real PKCS#11 token before the keys layer lands."""

    MECHANISMS = {"rsa-sha256": "SHA256_RSA_PKCS", "rsa-sha1": "SHA1_RSA_PKCS"}

    def __init__(self, d: Path, pki: Pki, label: str = "dmp-test", pin: str = "1234") -> None:
        import os
        import threading

        import pkcs11
        from pkcs11 import KeyType

        tokens = d / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        conf = d / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                        "log.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin,
                        "--so-pin", "12345678"], check=True, capture_output=True)
        self._lib = pkcs11.lib(SOFTHSM_MODULE)
        self._session = self._lib.get_token(token_label=label).open(user_pin=pin, rw=True)
        self._lock = threading.Lock()
        self._certs: dict[str, x509.Certificate] = {}
        self._keys = {}
        self.sign_count = 0
        pub, priv = self._session.generate_keypair(KeyType.RSA, 2048, label="sign", store=True)
        numbers = rsa.RSAPublicNumbers(int.from_bytes(pub[pkcs11.Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(pub[pkcs11.Attribute.MODULUS], "big"))
        self._keys["sign"] = priv
        self._certs["sign"] = pki.leaf(numbers.public_key(), "DRIMbox", "499700367909006")

    def sign(self, key_label: str, data: bytes, algorithm: str = "rsa-sha256") -> bytes:
        from pkcs11 import Mechanism

        with self._lock:  # one PKCS#11 session: one operation at a time
            self.sign_count += 1
            return bytes(self._keys[key_label].sign(
                data, mechanism=getattr(Mechanism, self.MECHANISMS[algorithm])))

    def certificate(self, label: str) -> x509.Certificate:
        return self._certs[label]

    def close(self) -> None:
        self._session.close()


def softhsm_available() -> str | None:
    """None when SoftHSM2 can be used, else the reason to skip."""
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not installed (Debian package softhsm2)"
    if not Path(SOFTHSM_MODULE).exists():
        return f"{SOFTHSM_MODULE} missing (Debian package softhsm2)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 not installed"
    return None
