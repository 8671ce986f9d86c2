"""The daemon's keys component: ready with a good token, certificate expiry watch in health."""

from __future__ import annotations

import datetime as dt

from appliance.component import Component
from appliance.keys import KeysComponent, Token
from appliance.keys.testpki import TestPki

SPARE = "drimbox-test-pin"


async def test_component_ready_and_signs(pki: TestPki) -> None:
    comp = KeysComponent(pki.hsm_config(0), poll_interval=30)
    assert isinstance(comp, Component) and comp.name == "keys"
    assert comp.health().ready is False  # not started yet
    await comp.start()
    try:
        h = comp.health()
        assert h.ready and h.status == "ok"
        assert 360 <= h.details["cert_auth_days_left"] <= 365
        sig = await comp.sign("sign", b"data")
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        comp.token.certificate("sign").public_key().verify(sig, b"data", padding.PKCS1v15(),
                                                           hashes.SHA256())
    finally:
        await comp.stop()
    await comp.stop()  # idempotent
    assert comp.health().ready is False


async def test_expiry_watch_in_health(pki: TestPki) -> None:
    cfg = pki.hsm_config(0, token_label=SPARE, pin_file=pki.spares[SPARE])
    tok = Token.from_config(cfg)
    now = dt.datetime.now(dt.UTC)
    with tok:
        pub = tok.public_key("sign")
    subject = pki.structures[0].spec
    from cryptography import x509

    name = x509.Name.from_rfc4514_string(f"CN={subject.box_name},OU={subject.structure_id},C=FR")
    for days, ready, status, level in ((20, True, "certificate expiring", "warning"),
                                       (5, True, "certificate expiring", "error"),
                                       (-2, False, "certificate expired", None)):
        cert = pki.issue(pub, name, "signature", not_before=now - dt.timedelta(days=30),
                         not_after=now + dt.timedelta(days=days))
        with tok:
            tok.store_certificate("sign", cert)
        comp = KeysComponent(cfg, poll_interval=30)
        await comp.start()
        try:
            h = comp.health()
            assert (h.ready, h.status, h.details.get("level")) == (ready, status, level), h
        finally:
            await comp.stop()
    with tok:  # only one certificate per label is kept
        assert tok.certificate("sign").not_valid_after_utc < now
        assert sum(1 for o in tok.objects() if o.kind == "certificate") == 1
