"""A test PKI shaped like IGC-Santé, built at run time, with leaf keys generated ON SoftHSM.

    TEST AC RACINE IGC-SANTE (software key, self-signed)
     |- TEST AC IGC-SANTE ORGANISATIONS  -> ORG auth (TLS client) and ORG signature certificates,
     |                                      subject CN=<box>, OU=<structure id>, O=<structure>, C=FR
     '- TEST AC IGC-SANTE SERVEURS       -> SSL server certificates for the box host names

Each structure has its own SoftHSM token (its own PIN file) holding the keys ``auth``, ``sign`` and
``server``; only the CA keys are software keys, generated here and kept in memory (never written).
Nothing here is committed: every run makes new keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import HsmConfig

from . import softhsm
from .errors import KeysError
from .token import PublicKey, Token


@dataclass(frozen=True)
class StructureSpec:
    """A health structure (radiology site) of the test PKI."""

    structure_id: str  # the identifier IGC-Santé puts in OU (e.g. an FINESS/SIRET-based id)
    name: str
    box_name: str
    hosts: tuple[str, ...] = ("localhost",)


DEFAULT_STRUCTURES = (
    StructureSpec("499700367909006", "CABINET RADIOLOGIE TEST", "DRIMBOX-TEST-1",
                  ("localhost", "db1.test")),
    StructureSpec("499700367909007", "CENTRE IMAGERIE TEST", "DRIMBOX-TEST-2",
                  ("localhost", "db2.test")),
)


@dataclass
class Structure:
    spec: StructureSpec
    token_label: str
    pin_file: Path
    auth_cert: Path  # leaf + issuing CA (PEM), for load_cert_chain
    sign_cert: Path
    server_cert: Path

    @property
    def structure_id(self) -> str:
        return self.spec.structure_id


@dataclass
class TestPki:
    """Paths and handles of a built test PKI. Certificates are PEM files."""

    workdir: Path
    module: Path
    softhsm_conf: Path  # SOFTHSM2_CONF
    root: Path  # the root certificate (trust anchor)
    org_ca: Path
    server_ca: Path
    bundle: Path  # root + both issuing CAs: cafile for peers and hsm.trust_anchors
    structures: list[Structure]
    #: label -> PIN file of extra tokens (a ``sign`` key each, no certificate) for tests that
    #: must be alone on their token (wrong PIN: PKCS#11 login state is per process)
    spares: dict[str, Path] = field(default_factory=dict)
    _ca_keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict, repr=False)

    __test__ = False  # not a pytest test class

    @property
    def token_label(self) -> str:
        return self.structures[0].token_label

    @property
    def pin_file(self) -> Path:
        return self.structures[0].pin_file

    def hsm_config(self, index: int = 0, **overrides: Any) -> HsmConfig:
        s = self.structures[index]
        values: dict[str, Any] = dict(module=self.module, token_label=s.token_label,
                                      pin_file=s.pin_file, auth_key_label="auth",
                                      sign_key_label="sign", trust_anchors=(self.bundle,))
        values.update(overrides)
        return HsmConfig(**values)

    def token(self, index: int = 0) -> Token:
        s = self.structures[index]
        return Token(self.module, s.token_label, s.pin_file)

    def issue(self, public_key: PublicKey, subject: x509.Name, use: str, *,
              issuer: str = "org", hosts: Sequence[str] = (),
              not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None,
              crl_url: str | None = None) -> x509.Certificate:
        """Issue one more certificate (for tests: expired, wrong usage, another key, a CRL
        distribution point at ``crl_url`` as IGC-Santé certificates have...)."""
        ca = self._ca(issuer)
        return _leaf(public_key, subject, use, ca, self._ca_keys[issuer], hosts,
                     not_before, not_after, crl_url)

    def _ca(self, issuer: str) -> x509.Certificate:
        ca_file = self.org_ca if issuer == "org" else self.server_ca
        return x509.load_pem_x509_certificate(ca_file.read_bytes())

    def crl(self, issuer: str = "org", revoked: Sequence[int] = ()) -> bytes:
        """A current DER CRL of that issuing CA listing the ``revoked`` serial numbers."""
        now = _now()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self._ca(issuer).subject)
             .last_update(now - dt.timedelta(minutes=5))
             .next_update(now + dt.timedelta(days=1)))
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(now - dt.timedelta(hours=1)).build())
        return b.sign(self._ca_keys[issuer], hashes.SHA256()).public_bytes(
            serialization.Encoding.DER)


def _name(cn: str, ou: str | None = None, o: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ca(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None,
        issuer_key: rsa.RSAPrivateKey, path_len: int | None) -> x509.Certificate:
    now = _now()
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.subject if issuer else subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


_USAGE = {
    # digital_signature, content_commitment, key_encipherment, data_encipherment, key_agreement
    "tls-client": ((True, False, True, False, False), [ExtendedKeyUsageOID.CLIENT_AUTH]),
    "signature": ((False, True, False, False, False), None),
    "tls-server": ((True, False, True, False, False), [ExtendedKeyUsageOID.SERVER_AUTH]),
}


def _leaf(public_key: PublicKey, subject: x509.Name, use: str, ca: x509.Certificate,
          ca_key: rsa.RSAPrivateKey, hosts: Sequence[str] = (),
          not_before: dt.datetime | None = None,
          not_after: dt.datetime | None = None,
          crl_url: str | None = None) -> x509.Certificate:
    now = _now()
    ku, eku = _USAGE[use]
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(ca.subject)
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before or now - dt.timedelta(hours=1))
         .not_valid_after(not_after or now + dt.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(*ku, False, False, False, False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if crl_url:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_test_pki(workdir: str | Path, token_dir: str | Path | None = None,
                  structures: Sequence[StructureSpec] = DEFAULT_STRUCTURES,
                  set_env: bool = True, spares: Sequence[str] = ()) -> TestPki:
    """Build the PKI in ``workdir``: SoftHSM tokens (one per structure), keys on them, certs.

    With ``set_env`` (default) SOFTHSM2_CONF is set in this process so the module finds the
    tokens; SoftHSM reads it once per process, so use one test PKI per process.
    """
    module = softhsm.module_path()
    if module is None:
        raise KeysError("SoftHSM2 is not installed (Debian package softhsm2)")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    tdir = Path(token_dir) if token_dir else work / "tokens"
    conf = softhsm.write_conf(tdir, work / "softhsm2.conf")
    env = {"SOFTHSM2_CONF": str(conf)}
    if set_env:
        os.environ.update(env)

    root_key = rsa.generate_private_key(65537, 2048)
    org_key = rsa.generate_private_key(65537, 2048)
    srv_key = rsa.generate_private_key(65537, 2048)
    root = _ca(_name("TEST AC RACINE IGC-SANTE", "0002 187512751", "ASIP-SANTE"), root_key, None,
               root_key, 1)
    org_ca = _ca(_name("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS", "0002 187512751",
                       "ASIP-SANTE"), org_key, root, root_key, 0)
    srv_ca = _ca(_name("TEST AC IGC-SANTE ELEMENTAIRE SERVEURS", "0002 187512751", "ASIP-SANTE"),
                 srv_key, root, root_key, 0)
    ca_dir = work / "ca"
    ca_dir.mkdir(exist_ok=True)
    (ca_dir / "root.pem").write_bytes(_pem(root))
    (ca_dir / "org-ca.pem").write_bytes(_pem(org_ca))
    (ca_dir / "server-ca.pem").write_bytes(_pem(srv_ca))
    (ca_dir / "bundle.pem").write_bytes(_pem(root, org_ca, srv_ca))

    built: list[Structure] = []
    for i, spec in enumerate(structures, 1):
        label = f"drimbox-test-{i}"
        sdir = work / f"structure-{i}"
        sdir.mkdir(exist_ok=True)
        pin_file = sdir / "pin"
        pin = softhsm.new_pin()
        softhsm.write_secret(pin_file, pin)
        softhsm.init_token(label, pin, softhsm.new_pin(12), env)
        tok = Token(module, label, pin_file)
        try:
            subj = _name(spec.box_name, spec.structure_id, spec.name)
            files = {}
            for key_label, use, ca, ca_key, hosts in (
                    ("auth", "tls-client", org_ca, org_key, ()),
                    ("sign", "signature", org_ca, org_key, ()),
                    ("server", "tls-server", srv_ca, srv_key, spec.hosts + ("127.0.0.1",))):
                pub = tok.generate_key(key_label)
                s = subj if key_label != "server" else _name(spec.hosts[0], spec.structure_id,
                                                              spec.name)
                leaf = _leaf(pub, s, use, ca, ca_key, hosts)
                tok.store_certificate(key_label, leaf)
                files[key_label] = sdir / f"{key_label}.pem"
                files[key_label].write_bytes(_pem(leaf, ca))
        finally:
            tok.close()
        built.append(Structure(spec, label, pin_file, files["auth"], files["sign"],
                               files["server"]))
    spare_pins: dict[str, Path] = {}
    for label in spares:
        pin_file = work / f"{label}.pin"
        pin = softhsm.new_pin()
        softhsm.write_secret(pin_file, pin)
        softhsm.init_token(label, pin, softhsm.new_pin(12), env)
        with Token(module, label, pin_file) as tok:
            tok.generate_key("sign")
        spare_pins[label] = pin_file
    return TestPki(work, module, conf, ca_dir / "root.pem", ca_dir / "org-ca.pem",
                   ca_dir / "server-ca.pem", ca_dir / "bundle.pem", built,
                   spare_pins, {"org": org_key, "server": srv_key, "root": root_key})
