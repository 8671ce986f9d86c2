"""The keys layer against a real card or HSM (bench only; see conftest.py)."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from appliance.keys import Token, TokenAbsent, certs

from .conftest import RealToken

pytestmark = [pytest.mark.hardware, pytest.mark.hil]


def test_sign_and_verify_with_the_card_certificate(real_token: RealToken) -> None:
    with Token(real_token.module, real_token.token_label, real_token.pin_file) as tok:
        cert = tok.certificate(real_token.key_label)
        sig = tok.sign(real_token.key_label, b"hil", "rsa-sha256")
        cert.public_key().verify(sig, b"hil", padding.PKCS1v15(), hashes.SHA256())
        print("structure id:", certs.structure_id(cert), "expires:", cert.not_valid_after_utc)


def test_key_is_not_extractable(real_token: RealToken) -> None:
    with Token(real_token.module, real_token.token_label, real_token.pin_file) as tok:
        attrs = tok.key_attributes(real_token.key_label)
    assert attrs["sensitive"] and not attrs["extractable"]


def test_pss_only_when_configured(real_token: RealToken) -> None:
    if not real_token.rsa_pss:
        pytest.skip("card configured without RSA-PSS (DRIMBOX_HIL_RSA_PSS=0)")
    with Token(real_token.module, real_token.token_label, real_token.pin_file) as tok:
        sig = tok.sign(real_token.key_label, b"hil", "rsa-pss-sha256")
        tok.certificate(real_token.key_label).public_key().verify(
            sig, b"hil", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


@pytest.mark.skipif(os.environ.get("DRIMBOX_HIL_REPLUG") != "1",
                    reason="interactive: set DRIMBOX_HIL_REPLUG=1 and follow the prompts")
def test_pull_card_out_and_put_it_back(real_token: RealToken) -> None:
    tok = Token(real_token.module, real_token.token_label, real_token.pin_file)
    tok.open()
    print("\n>>> pull the card out within 20 s")
    end = time.monotonic() + 20
    while time.monotonic() < end and tok.probe():
        time.sleep(0.5)
    assert tok.health().status == "token absent"
    with pytest.raises(TokenAbsent):
        tok.sign(real_token.key_label, b"x")
    print(">>> put the card back within 20 s")
    end = time.monotonic() + 20
    while time.monotonic() < end and not tok.probe():
        time.sleep(0.5)
    assert tok.health().ready
    assert len(tok.sign(real_token.key_label, b"x")) >= 128
    tok.close()
