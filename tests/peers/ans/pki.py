"""The test ANS signer's own PKI: root -> intermediate -> whitelist signers, with CRLs.

Shaped like the IGC-Santé chain of the real list's signer (CN=Liste Blanche DRIM-M,
OU=318751275100020, O=AGENCE DU NUMERIQUE EN SANTE, C=FR). The CRL distribution points point at
the test peer's HTTP server (``crl_base``), like the real ones point at igc-sante.esante.gouv.fr.
Signers: "good", "expired", "revoked" (listed in the intermediate's CRL), "other-ou".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.dmp.pki import name

SIGNER_CN = "Liste Blanche DRIM-M"
SIGNER_OU = "318751275100020"
SIGNER_O = "AGENCE DU NUMERIQUE EN SANTE"
OTHER_OU = "499700367909006"
SIGNERS = ("good", "expired", "revoked", "other-ou")


def _name(cn: str, ou: str | None = None, o: str = "ANS TEST") -> x509.Name:
    return name(cn, ou, o)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([
        x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None),
        # Like the real certificates: an ldap: point too, which the box must ignore.
        x509.DistributionPoint([x509.UniformResourceIdentifier(
            "ldap://annuaire.invalid/cn=TEST?certificaterevocationlist")], None, None, None),
    ])


@dataclass
class Signer:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]  # signer, intermediate, root (KeyInfo order of the ANS file)


@dataclass
class AnsPki:
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    inter: x509.Certificate
    inter_key: rsa.RSAPrivateKey
    signers: dict[str, Signer] = field(default_factory=dict)
    revoked_serials: list[int] = field(default_factory=list)

    def crl(self, which: str, now: dt.datetime | None = None) -> bytes:
        """DER CRL of "root" (lists nothing) or "inter" (lists the revoked signer)."""
        now = now or dt.datetime.now(dt.UTC)
        issuer, key = ((self.root, self.root_key) if which == "root"
                       else (self.inter, self.inter_key))
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
             .last_update(now - dt.timedelta(minutes=5))
             .next_update(now + dt.timedelta(days=1)))
        if which == "inter":
            for serial in self.revoked_serials:
                b = b.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(serial)
                    .revocation_date(now - dt.timedelta(days=1)).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def make_pki(crl_base: str) -> AnsPki:
    now = dt.datetime.now(dt.UTC)
    root_key, inter_key = _key(), _key()
    root_name = _name("TEST AC RACINE LISTE BLANCHE")
    ca_ku = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ca_ku, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    inter = (x509.CertificateBuilder().subject_name(_name("TEST AC ELEMENTAIRE ORGANISATIONS"))
             .issuer_name(root_name).public_key(inter_key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=30))
             .not_valid_after(now + dt.timedelta(days=3000))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(ca_ku, critical=True)
             .add_extension(_cdp(f"{crl_base}/crl/root.crl"), critical=False)
             .sign(root_key, hashes.SHA256()))
    pki = AnsPki(root, root_key, inter, inter_key)
    for kind in SIGNERS:
        key = _key()
        ou = OTHER_OU if kind == "other-ou" else SIGNER_OU
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                             x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIGNER_O),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                             x509.NameAttribute(NameOID.COMMON_NAME, SIGNER_CN)])
        if kind == "expired":
            nb, na = now - dt.timedelta(days=400), now - dt.timedelta(days=2)
        else:
            nb, na = now - dt.timedelta(days=1), now + dt.timedelta(days=1000)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(inter.subject)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(nb).not_valid_after(na)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, True, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               critical=False)
                .add_extension(_cdp(f"{crl_base}/crl/inter.crl"), critical=False)
                .sign(inter_key, hashes.SHA256()))
        if kind == "revoked":
            pki.revoked_serials.append(serial)
        pki.signers[kind] = Signer(key, cert, [cert, inter, root])
    return pki


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path
