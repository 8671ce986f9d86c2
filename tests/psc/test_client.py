"""The box's PSC client (``appliance.psc``) through a real TLS gateway process: what a peer box
reading from this box, or a professional logging in, would notice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.psc import PscUnavailable, TokenRefused
from appliance.psc.client import PscClient, bearer, new_pkce

from .conftest import BOX_CLIENT, REDIRECT, PscBox, browser, pick_user

pytestmark = pytest.mark.integration


def introspections(psc: Any) -> int:
    return len(psc.calls("introspect", client_id=BOX_CLIENT))


async def test_discovery_through_the_gateway(psc: Any, client: PscClient) -> None:
    d = await client.discovery()
    assert d.issuer == psc.issuer
    assert d.introspection_endpoint.startswith(psc.url + "/")


async def test_discovery_with_an_endpoint_off_the_psc_origin_is_refused(
        psc: Any, client: PscClient) -> None:
    doc = {"issuer": psc.issuer, "authorization_endpoint": psc.issuer + "/auth",
           "token_endpoint": psc.issuer + "/token",
           "introspection_endpoint": "https://elsewhere.example:443/introspect",
           "userinfo_endpoint": psc.issuer + "/userinfo", "jwks_uri": psc.issuer + "/certs"}
    psc.fault("discovery", json_body=doc)
    with pytest.raises(PscUnavailable, match="introspection_endpoint is on "
                       "https://elsewhere.example:443, not on the origin"):
        await client.discovery()
    # Not kept: the next call fetches the document again.
    assert (await client.discovery()).introspection_endpoint.startswith(psc.url)


async def test_a_valid_token_gives_the_professional(psc: Any, client: PscClient) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT)
    pro = await client.check_access_token(t["access_token"])
    assert pro.rpps == "899700218896" and pro.client_id == BOX_CLIENT
    assert pro.acr == "eidas1" and pro.expires_at == t["exp"]
    assert "899700218896" not in repr(pro)  # never logged by accident
    intro = await client.introspect(t["access_token"])
    assert intro.active and intro.audiences == (BOX_CLIENT,)


async def test_a_token_for_another_audience_is_refused(psc: Any, client: PscClient) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT, audiences=["another-box"])
    with pytest.raises(TokenRefused, match=r"token not for this box \(audience "
                       "'drimbox-test-1'"):
        await client.check_access_token(t["access_token"])
    # The same token is fine for a box whose audience it names.
    pro = await client.check_access_token(t["access_token"], audience="another-box")
    assert pro.rpps == "899700218896"


async def test_second_check_is_served_by_the_cache(psc: Any, client: PscClient) -> None:
    t = psc.issue_token("generaliste", BOX_CLIENT)
    before = introspections(psc)
    await client.check_access_token(t["access_token"])
    await client.check_access_token(t["access_token"])
    assert introspections(psc) == before + 1


async def test_concurrent_checks_share_one_introspection(psc: Any, client: PscClient) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT)
    await client.discovery()
    before = introspections(psc)
    psc.fault("introspect", delay=0.5)
    pros = await asyncio.gather(*(client.check_access_token(t["access_token"])
                                  for _ in range(8)))
    assert {p.rpps for p in pros} == {"899700218896"}
    assert introspections(psc) == before + 1


async def test_token_near_expiry_is_introspected_again_after_exp(
        psc: Any, client: PscClient) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT, lifetime=2)
    before = introspections(psc)
    await client.check_access_token(t["access_token"])
    time.sleep(max(0.0, t["exp"] - time.time()) + 0.3)
    with pytest.raises(TokenRefused, match="token expired"):
        await client.check_access_token(t["access_token"])
    assert introspections(psc) == before + 2


async def test_revoked_token_is_refused_once_the_cache_lets_go(
        psc: Any, box: PscBox) -> None:
    client = box.client(introspection_cache=0.0)
    try:
        t = psc.issue_token("radiologue", BOX_CLIENT)
        await client.check_access_token(t["access_token"])
        psc.revoke(token=t["access_token"])
        with pytest.raises(TokenRefused, match="token inactive"):
            await client.check_access_token(t["access_token"])
    finally:
        await client.close()


@pytest.mark.parametrize("token", ["", "a b", "x" * 9000, "é"])
async def test_what_is_not_a_bearer_token_never_reaches_psc(
        psc: Any, client: PscClient, token: str) -> None:
    before = introspections(psc)
    with pytest.raises(TokenRefused, match="not a bearer token"):
        await client.check_access_token(token)
    assert introspections(psc) == before


def test_bearer_header() -> None:
    assert bearer("Bearer abc.def-_") == "abc.def-_"
    for header in (None, "", "Basic abc", "Bearer", "Bearer a b"):
        with pytest.raises(TokenRefused, match="not a bearer token"):
            bearer(header)


@pytest.mark.parametrize("fault", [{"status": 503}, {"garbage": True}, {"delay": 5.0},
                                   {"status": 401, "json_body": {"error": "invalid_client"}}])
async def test_psc_down_or_broken_is_unavailable_never_inactive(
        psc: Any, client: PscClient, fault: dict[str, Any]) -> None:
    await client.discovery()
    t = psc.issue_token("radiologue", BOX_CLIENT)
    psc.fault("introspect", **fault)
    with pytest.raises(PscUnavailable):
        await client.check_access_token(t["access_token"])
    # Nothing was cached: PSC back, the same token is accepted.
    assert (await client.check_access_token(t["access_token"])).rpps == "899700218896"


async def test_psc_unreachable_is_unavailable(pki: Any, psc: Any, box: PscBox) -> None:
    client = box.client(discovery_url="https://127.0.0.1:9/x/.well-known/openid-configuration")
    try:
        with pytest.raises(PscUnavailable):
            await client.check_access_token("abc.def.ghi")
    finally:
        await client.close()


async def test_full_login_with_the_authorization_code(
        pki: Any, psc: Any, client: PscClient) -> None:
    verifier, challenge = new_pkce()
    url = await client.authorization_url("st-1", "nonce-1", challenge, REDIRECT)
    query = await pick_user(pki, url)
    assert query["state"] == "st-1"
    login = await client.exchange_code(query["code"], verifier, REDIRECT, "nonce-1")
    assert login.id_claims["acr"] == "eidas1" and login.id_claims["nonce"] == "nonce-1"
    assert login.expires_in == 120 and "access_token" not in repr(login)
    pro = await client.userinfo(login.access_token)
    assert pro.rpps == "899700218896"
    ex = pro.exercices[0]
    assert (ex.profession, ex.family_name, ex.given_name) == ("10", "RADIOLOGUE0021889",
                                                             "ROBERT")
    assert [a.structure_id for a in ex.activities] == ["499700367909006", "10B0172805"]
    assert (await client.check_access_token(login.access_token)).rpps == pro.rpps
    # Logging out at PSC ends the session: its access token no longer works.
    async with browser(pki) as s, s.get(await client.logout_url(login.id_token),
                                        allow_redirects=False) as r:
        assert r.status == 200
    with pytest.raises(TokenRefused, match="token inactive"):
        await client.userinfo(login.access_token)
    # The code is single use.
    with pytest.raises(TokenRefused, match=r"code refused \(invalid_grant\)"):
        await client.exchange_code(query["code"], verifier, REDIRECT, "nonce-1")


async def test_id_token_checks(pki: Any, psc: Any, client: PscClient) -> None:
    verifier, challenge = new_pkce()
    url = await client.authorization_url("st", "good-nonce", challenge, REDIRECT)
    query = await pick_user(pki, url)
    with pytest.raises(TokenRefused, match="nonce does not match"):
        await client.exchange_code(query["code"], verifier, REDIRECT, "other-nonce")
    now = int(time.time())
    base = {"iss": psc.issuer, "aud": BOX_CLIENT, "exp": now + 60, "iat": now, "sub": "s",
            "nonce": "n", "acr": "eidas1"}
    assert (await client.verify_id_token(psc.sign(base), "n"))["sub"] == "s"
    for claims, reason in ((base | {"aud": "other"}, "InvalidAudience"),
                           (base | {"iss": "https://evil.test"}, "InvalidIssuer"),
                           (base | {"exp": now - 120}, "id token expired"),
                           (base | {"acr": "eidas2"}, "acr is not eidas1"),
                           ({k: v for k, v in base.items() if k != "nonce"}, "nonce")):
        with pytest.raises(TokenRefused, match=reason):
            await client.verify_id_token(psc.sign(claims), "n")
    kid = jwt.get_unverified_header(psc.sign(base))["kid"]
    forged = jwt.encode(base, rsa.generate_private_key(65537, 2048), algorithm="RS256",
                        headers={"kid": kid})
    with pytest.raises(TokenRefused, match="InvalidSignature"):
        await client.verify_id_token(forged, "n")
    with pytest.raises(TokenRefused, match="key PSC does not publish"):
        await client.verify_id_token(psc.sign(base, kid="other-kid"), "n")
