"""The PSC simulator is strict where the real service is: what a box gets wrong is refused, as a
box developer would see it. The box side of every mTLS call goes through a real TLS gateway."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.psc.client import new_pkce
from appliance.tlsgateway import contract
from tests.dmp.pki import name, pem, write_key

from .conftest import (BOX_CLIENT, LOGGED_OUT, REDIRECT, PscBox, authorize_url, browser,
                       login, pick_user)

pytestmark = pytest.mark.integration


def oidc(psc: Any, endpoint: str) -> str:
    return f"{psc.issuer}/protocol/openid-connect/{endpoint}"


async def box_post(box: PscBox, url: str, data: dict[str, str],
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST as the box: through the gateway, authenticated by the token's auth key."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(
            path=str(box.plan.egress_socket))) as s:
        async with s.post(contract.egress_url("psc", url), data=data,
                          headers=headers or {}) as r:
            return r.status, await r.json(content_type=None)


def code_form(a: Any, **overrides: str | None) -> dict[str, str]:
    form = {"grant_type": "authorization_code", "code": a.code, "redirect_uri": REDIRECT,
            "code_verifier": a.verifier, "client_id": BOX_CLIENT}
    form.update(overrides)  # type: ignore[arg-type]
    return {k: v for k, v in form.items() if v is not None}


def redirect_query(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


async def test_discovery_names_every_endpoint_and_mtls_only(pki: Any, psc: Any) -> None:
    async with browser(pki) as s, s.get(psc.discovery_url) as r:
        doc = await r.json()
    assert doc["issuer"] == psc.issuer
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint",
                "introspection_endpoint", "end_session_endpoint", "jwks_uri"):
        assert doc[key].startswith(psc.url + "/")
    assert doc["token_endpoint_auth_methods_supported"] == ["tls_client_auth"]
    assert doc["acr_values_supported"] == ["eidas1"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


@pytest.mark.parametrize("override,error", [
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"acr_values": None}, "invalid_request"),
    ({"nonce": None}, "invalid_request"),
    ({"scope": "scope_all"}, "invalid_scope"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
async def test_bad_authorization_requests_are_sent_back_with_an_error(
        pki: Any, psc: Any, override: dict[str, Any], error: str) -> None:
    url, state, _nonce, _verifier = authorize_url(psc, **override)
    async with browser(pki) as s, s.get(url, allow_redirects=False) as r:
        assert r.status == 302
        location = r.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    q = redirect_query(location)
    assert q["error"] == error and q["state"] == state and "code" not in q


@pytest.mark.parametrize("override", [{"redirect_uri": REDIRECT + "/x"},
                                      {"redirect_uri": "https://evil.test/cb"},
                                      {"client_id": "unknown"}])
async def test_bad_client_or_redirect_uri_is_shown_never_redirected(
        pki: Any, psc: Any, override: dict[str, str]) -> None:
    url, *_ = authorize_url(psc, **override)
    async with browser(pki) as s, s.get(url, allow_redirects=False) as r:
        assert r.status == 400
        assert "Location" not in r.headers
        assert "Erreur" in await r.text()


async def test_code_flow_gives_tokens_once(pki: Any, psc: Any, box: PscBox) -> None:
    a = await login(pki, psc)
    status, body = await box_post(box, oidc(psc, "token"), code_form(a))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["acr"] == "eidas1" and claims["aud"] == [BOX_CLIENT]
    assert claims["preferred_username"] == claims["SubjectNameID"] == "899700218896"
    id_claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["nonce"] == a.nonce and id_claims["aud"] == BOX_CLIENT
    # Used twice: refused, and what it gave is revoked.
    status, again = await box_post(box, oidc(psc, "token"), code_form(a))
    assert (status, again["error"]) == (400, "invalid_grant")
    status, intro = await box_post(box, oidc(psc, "token/introspect"),
                                   {"token": body["access_token"], "client_id": BOX_CLIENT})
    assert intro == {"active": False}


async def test_client_secret_is_refused_even_with_the_right_certificate(
        pki: Any, psc: Any, box: PscBox) -> None:
    a = await login(pki, psc)
    status, body = await box_post(box, oidc(psc, "token"), code_form(a, client_secret="s3cret"))
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await box_post(box, oidc(psc, "token"), code_form(a),
                                  headers={"Authorization": "Basic ZHJpbWJveDpzM2NyZXQ="})
    assert (status, body["error"]) == (401, "invalid_client")


def other_client_cert(pki: Any, d: Path) -> tuple[Path, Path]:
    """A valid TLS client certificate of the test PKI, but not the box's (another DN)."""
    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), name("OTHER-BOX", "499700367909099", "AUTRE"),
                     "tls-client")
    (d / "other.pem").write_bytes(pem(cert))
    return d / "other.pem", write_key(d / "other.key", key)


async def test_no_or_another_client_certificate_is_refused(
        pki: Any, psc: Any, tmp_path: Path) -> None:
    a = await login(pki, psc)
    async with browser(pki) as s, s.post(oidc(psc, "token"), data=code_form(a)) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_client"
    async with browser(pki, other_client_cert(pki, tmp_path)) as s:
        for endpoint in ("token", "token/introspect"):
            async with s.post(oidc(psc, endpoint),
                              data=code_form(a) | {"token": "x"}) as r:
                assert r.status == 401
                assert (await r.json())["error"] == "invalid_client"


async def test_pkce_and_redirect_uri_are_checked_at_the_token_endpoint(
        pki: Any, psc: Any, box: PscBox) -> None:
    for override, error in (({"code_verifier": None}, "invalid_request"),
                            ({"code_verifier": new_pkce()[0]}, "invalid_grant"),
                            ({"redirect_uri": REDIRECT + "/x"}, "invalid_grant")):
        a = await login(pki, psc)
        status, body = await box_post(box, oidc(psc, "token"), code_form(a, **override))
        assert (status, body["error"]) == (400, error), override


async def test_expired_code_is_refused(pki: Any, psc: Any, box: PscBox) -> None:
    psc.settings(code_lifetime=1)
    a = await login(pki, psc)
    time.sleep(1.5)
    status, body = await box_post(box, oidc(psc, "token"), code_form(a))
    assert (status, body["error"], body["error_description"]) == (400, "invalid_grant",
                                                                  "code expired")


async def introspect(box: PscBox, psc: Any, token: str) -> dict[str, Any]:
    status, body = await box_post(box, oidc(psc, "token/introspect"),
                                  {"token": token, "client_id": BOX_CLIENT})
    assert status == 200, body
    return body


async def test_introspection_active_then_expired(psc: Any, box: PscBox) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT, lifetime=1)
    body = await introspect(box, psc, t["access_token"])
    assert body["active"] is True and body["client_id"] == BOX_CLIENT
    assert body["aud"] == [BOX_CLIENT] and body["acr"] == "eidas1"
    assert body["preferred_username"] == "899700218896"
    time.sleep(max(0.0, t["exp"] - time.time()) + 1.1)
    assert await introspect(box, psc, t["access_token"]) == {"active": False}


async def test_forged_malformed_unknown_and_revoked_tokens_are_inactive(
        psc: Any, box: PscBox) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT)
    claims = jwt.decode(t["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(t["access_token"])
    forged = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256",
                        headers={"kid": header["kid"]})
    head, payload, _sig = t["access_token"].split(".")
    for token in (forged, f"{head}.{payload}.", "not-a-jwt",
                  jwt.encode(claims | {"jti": "unknown"}, "k" * 32, algorithm="HS256")):
        assert await introspect(box, psc, token) == {"active": False}
    assert (await introspect(box, psc, t["access_token"]))["active"] is True
    psc.revoke(token=t["access_token"])
    assert await introspect(box, psc, t["access_token"]) == {"active": False}


async def test_logout_ends_the_session_and_its_tokens(pki: Any, psc: Any, box: PscBox) -> None:
    a = await login(pki, psc)
    _, tokens = await box_post(box, oidc(psc, "token"), code_form(a))
    status, refreshed = await box_post(box, oidc(psc, "token"), {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": BOX_CLIENT})
    assert status == 200 and refreshed["access_token"] != tokens["access_token"]
    assert (await introspect(box, psc, refreshed["access_token"]))["active"] is True
    query = urllib.parse.urlencode({"id_token_hint": refreshed["id_token"],
                                    "post_logout_redirect_uri": LOGGED_OUT, "state": "s1"})
    async with browser(pki) as s, s.get(f"{oidc(psc, 'logout')}?{query}",
                                        allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == LOGGED_OUT + "?state=s1"
    assert await introspect(box, psc, refreshed["access_token"]) == {"active": False}
    status, body = await box_post(box, oidc(psc, "token"), {
        "grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"],
        "client_id": BOX_CLIENT})
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_userinfo_has_the_subjectrefpro_shape(pki: Any, psc: Any) -> None:
    t = psc.issue_token("radiologue", BOX_CLIENT)
    async with browser(pki) as s:
        async with s.get(oidc(psc, "userinfo"),
                         headers={"Authorization": f"Bearer {t['access_token']}"}) as r:
            doc = await r.json()
        async with s.get(oidc(psc, "userinfo"), headers={"Authorization": "Bearer x.y.z"}) as r:
            assert r.status == 401
    assert doc["SubjectNameID"] == doc["preferred_username"] == "899700218896"
    ex = doc["SubjectRefPro"]["exercices"][0]
    assert ex["codeProfession"] == "10" and ex["nomDexercice"] == "RADIOLOGUE0021889"
    act = ex["activities"][0]
    assert act["ancienIdentifiantDeLaStructure"] == "499700367909006"
    assert {"raisonSocialeSite", "codeSecteurDactivite", "codeModeExercice",
            "identifiantTechniqueDeLaStructure"} <= set(act)


async def test_test_user_picker_lists_every_user(pki: Any, psc: Any) -> None:
    url, *_ = authorize_url(psc)
    q = await pick_user(pki, url, "generaliste")
    assert q["code"] and q["state"]
    async with browser(pki) as s, s.get(url) as r:
        page = await r.text()
    assert page.count("<form") == 2
