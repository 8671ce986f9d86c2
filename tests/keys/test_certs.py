"""Certificate checks on the test PKI: chain, usage per use, expiry watch, structure id; and fuzzing
of the parsers the keys layer owns (PIN file, URI-PEM, certificate bundles, subjects)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.keys import CertificateRefused, KeysError, PinFileError, certs, provider
from appliance.keys.csr import parse_subject
from appliance.keys.testpki import TestPki, make_test_pki
from appliance.keys.token import read_pin


def _load(p: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(p.read_bytes())


def test_org_certificates_are_shaped_like_igc_sante(pki: TestPki) -> None:
    trust = certs.load_pem_certificates([pki.bundle])
    for s in pki.structures:
        auth, org_ca = _load(s.auth_cert)
        sign = _load(s.sign_cert)[0]
        chain = certs.check_for_use(auth, "tls-client", trust)
        assert [c.subject.rfc4514_string().split(",")[0] for c in chain] == [
            f"CN={s.spec.box_name}", "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS",
            "CN=TEST AC RACINE IGC-SANTE"]
        certs.check_for_use(sign, "signature", trust)
        assert certs.structure_id(auth) == certs.structure_id(sign) == s.structure_id
        server = _load(s.server_cert)[0]
        certs.check_for_use(server, "tls-server", trust)
        assert "localhost" in server.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert pki.structures[0].structure_id != pki.structures[1].structure_id


@pytest.mark.parametrize("cert,use", [("auth_cert", "signature"), ("sign_cert", "tls-client"),
                                      ("sign_cert", "tls-server"), ("server_cert", "tls-client"),
                                      ("auth_cert", "tls-server")])
def test_wrong_usage_is_refused(pki: TestPki, cert: str, use: str) -> None:
    c = _load(getattr(pki.structures[0], cert))[0]
    with pytest.raises(CertificateRefused, match=f"not for {use}"):
        certs.check_usage(c, use)


def test_chain_from_another_pki_is_refused(pki: TestPki, tmp_path: Path) -> None:
    leaf = _load(pki.structures[0].auth_cert)[0]
    # a look-alike CA with the same names but other keys must not validate the leaf
    other = make_test_pki(tmp_path / "other", structures=[], set_env=False)
    with pytest.raises(CertificateRefused, match="not issued by a configured trust anchor"):
        certs.validate_chain(leaf, certs.load_pem_certificates([other.bundle]))
    with pytest.raises(CertificateRefused, match="no trust anchor"):
        certs.validate_chain(leaf, _load(pki.org_ca))


def test_leaf_cannot_act_as_ca(pki: TestPki) -> None:
    a = _load(pki.structures[0].auth_cert)[0]
    key = rsa.generate_private_key(65537, 2048)
    # a certificate "issued" by a leaf: signed with a key that is not the leaf's is refused
    with pytest.raises(CertificateRefused):
        certs.validate_chain(pki.issue(key.public_key(), a.subject, "tls-client"),
                             [a] + certs.load_pem_certificates([pki.root]))


def test_expiry_levels(pki: TestPki) -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    subj = x509.Name.from_rfc4514_string("CN=X,OU=1,C=FR")
    now = dt.datetime.now(dt.UTC)
    levels = {}
    for days in (200, 20, 5, -1):
        c = pki.issue(key, subj, "tls-client", not_before=now - dt.timedelta(days=10),
                      not_after=now + dt.timedelta(days=days))
        levels[days] = certs.expiry(c, now).level
    assert levels == {200: "ok", 20: "warning", 5: "error", -1: "expired"}
    future = pki.issue(key, subj, "tls-client", not_before=now + dt.timedelta(days=1))
    with pytest.raises(CertificateRefused, match="not valid before"):
        certs.check_validity(future, now)


def test_matches_key(pki: TestPki) -> None:
    with pki.token() as tok:
        assert certs.matches_key(tok.certificate("auth"), tok.public_key("auth"))
        assert not certs.matches_key(tok.certificate("auth"), tok.public_key("sign"))


# -- fuzzing ------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_fuzz_pin_file(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "pin"
    p.write_bytes(data)
    p.chmod(0o600)
    try:
        pin = read_pin(p)
    except PinFileError as e:
        assert not data.rstrip(b"\r\n") or "not UTF-8" in str(e)
    else:
        assert pin and not pin.endswith(("\n", "\r"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_uri_pem_parser(text: str) -> None:
    try:
        uri = provider.parse_uri_pem(text)
    except ValueError:
        return
    assert uri.startswith("pkcs11:")


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_uri_pem_roundtrip(token: str, label: str) -> None:
    uri = provider.key_uri(token, label, "/run/credentials/x/pin")
    assert provider.parse_uri_pem(provider.uri_pem(uri)) == uri
    assert ";" not in uri.split("object=")[1].split(";")[0]  # labels cannot inject attributes


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_certificate_bundle(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "bundle.pem"
    p.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + data + b"\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateRefused):
        certs.load_pem_certificates([p])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_subject(text: str) -> None:
    try:
        name = parse_subject(text)
    except KeysError:
        return
    assert name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
