"""Token: signatures made in SoftHSM and verified with cryptography, non-extractable keys, PIN
handling, missing token/module/key, concurrent callers, recovery when the token comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from appliance.keys import (
    KeyNotFound,
    KeysError,
    ModuleError,
    PinError,
    PinFileError,
    Token,
    TokenAbsent,
    softhsm,
)
from appliance.keys.testpki import TestPki

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("algorithm,pad,digest", [
    ("rsa-sha256", padding.PKCS1v15(), hashes.SHA256()),
    ("rsa-sha1", padding.PKCS1v15(), hashes.SHA1()),
    ("rsa-pss-sha256", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()),
])
def test_signature_verifies_against_certificate(pki: TestPki, algorithm, pad, digest) -> None:
    with pki.token() as tok:
        data = b"<ds:SignedInfo>canonical bytes</ds:SignedInfo>"
        sig = tok.sign("sign", data, algorithm)
        pub = tok.certificate("sign").public_key()
        pub.verify(sig, data, pad, digest)
        with pytest.raises(InvalidSignature):
            pub.verify(sig, data + b"x", pad, digest)


def test_default_algorithm_is_pkcs1_sha256(pki: TestPki) -> None:
    with pki.token() as tok:
        sig = tok.sign("auth", b"data")
        tok.certificate("auth").public_key().verify(sig, b"data", padding.PKCS1v15(),
                                                    hashes.SHA256())


def test_ecdsa_key_on_token(pki: TestPki) -> None:
    with pki.token(1) as tok:
        pub = tok.generate_key("ec-test", "ec-p256")
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        sig = tok.sign("ec-test", b"data", "ecdsa-sha256")
        pub.verify(sig, b"data", ec.ECDSA(hashes.SHA256()))
        with pytest.raises(KeysError):
            tok.sign("ec-test", b"data", "rsa-sha256")


def test_unknown_algorithm_is_refused(pki: TestPki) -> None:
    with pki.token() as tok, pytest.raises(ValueError, match="unknown signature algorithm"):
        tok.sign("sign", b"x", "md5")


def test_keys_are_sensitive_and_never_extractable(pki: TestPki, pkcs11_tool: str) -> None:
    with pki.token() as tok:
        for label in ("auth", "sign", "server"):
            assert tok.key_attributes(label) == {"sensitive": True, "extractable": False,
                                                 "never_extractable": True, "local": True}
    base = [pkcs11_tool, "--module", str(pki.module), "--token-label", pki.token_label,
            "--login", "--pin", pki.pin_file.read_text()]
    env = {**os.environ, "SOFTHSM2_CONF": str(pki.softhsm_conf)}
    pub = subprocess.run(base + ["--read-object", "--type", "pubkey", "--label", "auth"],
                         capture_output=True, env=env, timeout=60)
    assert pub.returncode == 0 and pub.stdout.startswith(b"\x30")  # the public half reads fine
    priv = subprocess.run(base + ["--read-object", "--type", "privkey", "--label", "auth"],
                          capture_output=True, env=env, timeout=60)
    assert priv.stdout == b""  # no key material comes out (pkcs11-tool exits 0 with a notice)
    # The export attempts a real attacker with the PIN would make, through PKCS#11 itself:
    # read the private exponent, or wrap the key under a key of one's own.
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11 import exceptions as p11e

    from appliance.keys import module as p11module

    tok = p11module.load(str(pki.module)).get_token(token_label=pki.token_label)
    try:
        s = tok.open(rw=True, user_pin=pki.pin_file.read_text())
    except p11e.UserAlreadyLoggedIn:  # this process already logged in (login is per process)
        s = tok.open(rw=True)
    with s:
        key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="auth")
        with pytest.raises(p11e.AttributeSensitive):
            key[Attribute.PRIVATE_EXPONENT]
        wrapper = s.generate_key(KeyType.AES, 256, store=False,
                                 template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True})
        with pytest.raises((p11e.KeyUnextractable, p11e.KeyNotWrappable)):
            wrapper.wrap_key(key)


def test_generate_key_refuses_existing_label(pki: TestPki) -> None:
    with pki.token() as tok, pytest.raises(KeysError, match="already exists"):
        tok.generate_key("auth")


SPARE = "drimbox-test-pin"  # a token no other test logs in to (PKCS#11 login is per process)


def test_wrong_pin_is_refused_and_not_retried(pki: TestPki, tmp_path: Path) -> None:
    bad = tmp_path / "pin"
    softhsm.write_secret(bad, "00000000")
    tok = Token(pki.module, SPARE, bad, max_pin_attempts=1)
    with pytest.raises(PinError, match="PIN refused"):
        tok.open()
    assert tok.health().ready is False and tok.health().status == "pin refused"
    # the budget is spent: the box does not present the same wrong PIN again
    with pytest.raises(PinError, match="not trying again"):
        tok.sign("sign", b"x")
    # a corrected PIN file is a new budget, and the token was not locked by the attempt
    softhsm.write_secret(bad, pki.spares[SPARE].read_text())
    os.utime(bad, ns=(1, 1))
    assert len(tok.sign("sign", b"x")) == 256
    tok.close()


def test_pin_file_problems(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(PinFileError, match="not found"):
        Token(pki.module, pki.token_label, tmp_path / "nope").open()
    loose = tmp_path / "loose"
    loose.write_text(pki.pin_file.read_text())
    loose.chmod(0o644)
    with pytest.raises(PinFileError, match="other users"):
        Token(pki.module, pki.token_label, loose).open()
    empty = tmp_path / "empty"
    softhsm.write_secret(empty, "\n")
    with pytest.raises(PinFileError, match="empty"):
        Token(pki.module, pki.token_label, empty).open()


def test_pin_never_in_error_messages(pki: TestPki, tmp_path: Path) -> None:
    bad = tmp_path / "pin"
    softhsm.write_secret(bad, "98765432")
    with pytest.raises(PinError) as e:
        Token(pki.module, SPARE, bad, max_pin_attempts=5).open()
    assert "98765432" not in str(e.value)


def test_missing_token_module_and_key(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(TokenAbsent, match="not present"):
        Token(pki.module, "no-such-token", pki.pin_file).open()
    with pytest.raises(ModuleError, match="not found"):
        Token(tmp_path / "libnothing.so", pki.token_label, pki.pin_file).open()
    not_a_lib = tmp_path / "fake.so"
    not_a_lib.write_bytes(b"not an ELF")
    with pytest.raises(ModuleError):
        Token(not_a_lib, pki.token_label, pki.pin_file).open()
    with pki.token() as tok:
        with pytest.raises(KeyNotFound, match="no private key labelled 'nope'"):
            tok.sign("nope", b"x")
        with pytest.raises(KeyNotFound, match="no certificate"):
            tok.certificate("nope")


def test_from_config(pki: TestPki) -> None:
    tok = Token.from_config(pki.hsm_config(1))
    with tok:
        assert tok.certificate(pki.hsm_config(1).auth_key_label).subject == \
            tok.certificate("auth").subject
        assert tok.health().ready


def test_concurrent_signers_share_one_session(pki: TestPki) -> None:
    tok = pki.token()
    tok.open()
    pub = tok.certificate("sign").public_key()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                data = f"{n}-{i}".encode()
                pub.verify(tok.sign("sign", data), data, padding.PKCS1v15(), hashes.SHA256())
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    tok.close()
    assert errors == []


# Run in a fresh process with its own SoftHSM store: recovery re-initialises the module, which
# must not disturb the TLS tests' pkcs11-provider sharing it in this process.
RECOVERY = r'''
import asyncio, json, os, shutil, sys
from pathlib import Path
work = Path(sys.argv[1])
from appliance.keys import softhsm
conf = softhsm.write_conf(work / "tokens", work / "softhsm2.conf")
os.environ["SOFTHSM2_CONF"] = str(conf)
softhsm.init_token("vanish", "11223344", "5566778899")
softhsm.write_secret(work / "pin", "11223344")
from appliance.config import HsmConfig
from appliance.keys import KeysComponent, Token, TokenAbsent
cfg = HsmConfig(module=softhsm.module_path(), token_label="vanish", pin_file=work / "pin",
                auth_key_label="auth", sign_key_label="sign")
out = {}
async def main():
    comp = KeysComponent(cfg, poll_interval=30)
    await comp.start()
    tok = comp.token
    tok.generate_key("sign")
    out["before"] = len(tok.sign("sign", b"x"))
    out["health_before"] = comp.health().as_json()
    (store,) = [p for p in (work / "tokens").iterdir()]
    shutil.move(store, work / "away")
    try:
        tok.sign("sign", b"x")
        out["away"] = "signed"
    except TokenAbsent as e:
        out["away"] = "TokenAbsent"
    comp.wake(); await asyncio.sleep(0.3)
    out["health_away"] = comp.health().as_json()
    shutil.move(work / "away", store)
    for _ in range(40):  # re-probed on each wake; back within a few seconds
        comp.wake(); await asyncio.sleep(0.25)
        if comp.health().ready:
            break
    out["health_back"] = comp.health().as_json()
    out["after"] = len(tok.sign("sign", b"x"))
    await comp.stop()
asyncio.run(main())
print(json.dumps(out))
'''


def test_token_goes_away_and_comes_back(tmp_path: Path) -> None:
    if softhsm.module_path() is None:
        pytest.skip("SoftHSM2 not installed")
    r = subprocess.run([sys.executable, "-c", RECOVERY, str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] == 256
    assert out["health_before"]["ready"] is True
    assert out["away"] == "TokenAbsent"
    assert out["health_away"] == {"ready": False, "status": "token absent",
                                  "token": "vanish", "error": out["health_away"].get("error")}
    assert out["health_back"]["ready"] is True
    assert out["after"] == 256


def test_certificate_from_the_data_directory(pki: TestPki, tmp_path: Path) -> None:
    """Tokens that cannot hold certificates: the imported one is kept in the data directory."""
    from cryptography.hazmat.primitives import serialization

    with pki.token() as tok:
        cert = tok.certificate("auth")
    (tmp_path / "other.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with Token(pki.module, pki.token_label, pki.pin_file, cert_dir=tmp_path) as tok:
        assert tok.certificate("other") == cert
        with pytest.raises(KeyNotFound, match=f"nor in {tmp_path}"):
            tok.certificate("missing")
