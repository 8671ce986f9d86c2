"""``drimbox hsm …`` end to end, as an operator runs it: init, keygen, csr, import-cert, status,
test-pki, each in its own process on a private SoftHSM store."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from appliance.config import example
from appliance.keys import softhsm

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    if softhsm.module_path() is None:
        pytest.skip("SoftHSM2 not installed (Debian package softhsm2)")
    conf = softhsm.write_conf(tmp_path / "tokens", tmp_path / "softhsm2.conf")
    text = example(str(tmp_path / "data")).replace(
        "/run/credentials/drimbox.service/hsm-pin", str(tmp_path / "secrets" / "hsm-pin")).replace(
        "/usr/lib/softhsm/libsofthsm2.so", str(softhsm.module_path()))
    cfg = tmp_path / "box.toml"
    cfg.write_text(text)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(REPO)}
    return cfg, env


def drimbox(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def _issue(csr: x509.CertificateSigningRequest, days: int = 365) -> tuple[bytes, bytes]:
    ca_key = rsa.generate_private_key(65537, 2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST AC IGC-SANTE")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(True, None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_name)
            .public_key(csr.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return (leaf.public_bytes(serialization.Encoding.PEM),
            ca.public_bytes(serialization.Encoding.PEM))


def test_init_keygen_csr_import_status(box, tmp_path: Path) -> None:
    cfg, env = box
    r = drimbox(env, "hsm", "init", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    pin = tmp_path / "secrets" / "hsm-pin"
    assert (pin.stat().st_mode & 0o777) == 0o600 and pin.read_text().isdigit()
    assert pin.read_text() not in r.stdout + r.stderr  # the PIN is never printed
    assert drimbox(env, "hsm", "init", "-c", str(cfg)).returncode == 0  # idempotent

    r = drimbox(env, "hsm", "keygen", "-c", str(cfg), "--label", "auth")
    assert r.returncode == 0 and "extractable=False" in r.stdout, r.stderr
    r = drimbox(env, "hsm", "keygen", "-c", str(cfg), "--label", "auth")
    assert r.returncode == 1 and "already exists" in r.stderr

    subject = "CN=DRIMBOX-1,OU=499700367909006,O=CABINET X,ST=Paris,C=FR"
    r = drimbox(env, "hsm", "csr", "-c", str(cfg), "--label", "auth", "--subject", subject,
                "--dns", "db1.example.org", "--out", str(tmp_path / "auth.csr"))
    assert r.returncode == 0, r.stderr
    csr = x509.load_pem_x509_csr((tmp_path / "auth.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == subject
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == \
        "499700367909006"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db1.example.org"]

    # a certificate for another key is refused, and nothing is stored
    other = rsa.generate_private_key(65537, 2048)
    foreign_csr = (x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
                   .sign(other, hashes.SHA256()))
    foreign, _ = _issue(foreign_csr)
    (tmp_path / "foreign.pem").write_bytes(foreign)
    r = drimbox(env, "hsm", "import-cert", "-c", str(cfg), "--label", "auth", "--cert",
                str(tmp_path / "foreign.pem"))
    assert r.returncode == 1 and "does not match" in r.stderr
    assert "certificate 'auth'" not in drimbox(env, "hsm", "status", "-c", str(cfg)).stdout

    leaf, _ = _issue(csr)
    (tmp_path / "auth.pem").write_bytes(leaf)
    r = drimbox(env, "hsm", "import-cert", "-c", str(cfg), "--label", "auth", "--cert",
                str(tmp_path / "auth.pem"))
    assert r.returncode == 0, r.stderr
    r = drimbox(env, "hsm", "status", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "certificate 'auth': C=FR" not in r.stdout  # shown most specific first
    assert "certificate 'auth': CN=DRIMBOX-1,OU=499700367909006" in r.stdout
    assert "never_extractable=True" in r.stdout and "(364 days, ok)" in r.stdout
    assert "token 'drimbox'  <- hsm.token_label" in r.stdout


def test_status_warns_about_expiry(box, tmp_path: Path) -> None:
    cfg, env = box
    assert drimbox(env, "hsm", "init", "-c", str(cfg)).returncode == 0
    assert drimbox(env, "hsm", "keygen", "-c", str(cfg), "--label", "sign").returncode == 0
    r = drimbox(env, "hsm", "csr", "-c", str(cfg), "--label", "sign", "--subject",
                "CN=X,OU=1,C=FR", "--out", str(tmp_path / "s.csr"))
    assert r.returncode == 0, r.stderr
    leaf, _ = _issue(x509.load_pem_x509_csr((tmp_path / "s.csr").read_bytes()), days=5)
    (tmp_path / "s.pem").write_bytes(leaf)
    assert drimbox(env, "hsm", "import-cert", "-c", str(cfg), "--label", "sign", "--cert",
                   str(tmp_path / "s.pem")).returncode == 0
    r = drimbox(env, "hsm", "status", "-c", str(cfg))
    assert r.returncode == 3 and ", error)" in r.stdout


def test_errors_are_clear(box, tmp_path: Path) -> None:
    cfg, env = box
    r = drimbox(env, "hsm", "status", "-c", str(cfg))  # no token yet
    assert r.returncode == 1 and "token absent" in r.stdout
    r = drimbox(env, "hsm", "keygen", "-c", str(tmp_path / "missing.toml"), "--label", "x")
    assert r.returncode == 2 and "configuration file not found" in r.stderr
    not_softhsm = tmp_path / "hsm.toml"
    not_softhsm.write_text(cfg.read_text().replace(str(softhsm.module_path()),
                                                   "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"))
    r = drimbox(env, "hsm", "init", "-c", str(not_softhsm))
    assert r.returncode == 1 and "SoftHSM development tokens only" in r.stderr
    assert drimbox(env, "hsm", "init", "-c", str(cfg)).returncode == 0
    r = drimbox(env, "hsm", "csr", "-c", str(cfg), "--label", "nokey", "--subject", "CN=X,C=FR",
                "--out", str(tmp_path / "x.csr"))
    assert r.returncode == 1 and "no public key labelled 'nokey'" in r.stderr
    assert not (tmp_path / "x.csr").exists()
    r = drimbox(env, "hsm", "csr", "-c", str(cfg), "--label", "nokey", "--subject", "OU=1,C=FR",
                "--out", str(tmp_path / "x.csr"))
    assert r.returncode == 1 and "a CN is required" in r.stderr


def test_test_pki_command(box, tmp_path: Path) -> None:
    cfg, env = box
    r = drimbox(env, "hsm", "test-pki", "-c", str(cfg), "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "export SOFTHSM2_CONF=" in r.stdout and 'token_label = "drimbox-test-2"' in r.stdout
    chain = x509.load_pem_x509_certificates((tmp_path / "demo/structure-1/auth.pem").read_bytes())
    assert chain[1].subject == chain[0].issuer


def test_ec_key_and_trust_anchor_check_on_import(box, tmp_path: Path) -> None:
    cfg, env = box
    assert drimbox(env, "hsm", "init", "-c", str(cfg)).returncode == 0
    r = drimbox(env, "hsm", "keygen", "-c", str(cfg), "--label", "ec", "--type", "ec-p256")
    assert r.returncode == 0, r.stderr
    r = drimbox(env, "hsm", "csr", "-c", str(cfg), "--label", "ec", "--subject", "CN=EC,OU=1,C=FR",
                "--out", str(tmp_path / "ec.csr"))
    assert r.returncode == 0, r.stderr
    csr = x509.load_pem_x509_csr((tmp_path / "ec.csr").read_bytes())
    assert csr.is_signature_valid and csr.signature_hash_algorithm.name == "sha256"
    leaf, ca = _issue(csr)
    (tmp_path / "ec.pem").write_bytes(leaf)
    # with trust anchors configured, a certificate from another CA is refused
    other_ca = x509.load_pem_x509_certificate(_issue(csr)[1])
    (tmp_path / "anchors.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    anchored = tmp_path / "anchored.toml"
    anchored.write_text(cfg.read_text().replace(
        'sign_key_label = "sign"',
        f'sign_key_label = "sign"\ntrust_anchors = ["{tmp_path}/anchors.pem"]'))
    r = drimbox(env, "hsm", "import-cert", "-c", str(anchored), "--label", "ec", "--cert",
                str(tmp_path / "ec.pem"))
    assert r.returncode == 1 and "not issued by a configured trust anchor" in r.stderr
    # with its own CA as anchor it is accepted
    (tmp_path / "anchors.pem").write_bytes(ca)
    r = drimbox(env, "hsm", "import-cert", "-c", str(anchored), "--label", "ec", "--cert",
                str(tmp_path / "ec.pem"))
    assert r.returncode == 0, r.stderr
