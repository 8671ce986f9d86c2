"""The box's Pro Santé Connect client, over the TLS gateway.

Every request goes as plain HTTP to the gateway's egress socket (``connector``) at the URL
``url_for(url)`` gives; the gateway goes out with mTLS and the organisation's auth key, which is
how PSC authenticates the box (RFC 8705 ``tls_client_auth``: no client_secret exists).

The endpoints come from the discovery document, fetched once and again after a failure; every
back-channel endpoint (token, introspection, userinfo, JWKS) must be on the origin of
``psc.discovery_url``, the only one the gateway's ``psc`` upstream reaches.

Nothing here logs a token, a code, a name or an RPPS number.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from appliance.tlsgateway.contract import GATEWAY_ERROR_HEADER, origin_of

from .cache import IntrospectionCache
from .errors import PscUnavailable, TokenRefused
from .model import Introspection, Professional

log = logging.getLogger(__name__)

ACR = "eidas1"
SCOPE = "openid scope_all"
WELL_KNOWN = "/.well-known/openid-configuration"
BACK_CHANNEL = ("token_endpoint", "introspection_endpoint", "userinfo_endpoint", "jwks_uri")
# RFC 6750 b64token, bounded: anything else is not a bearer token.
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]{1,8192}=*")
MAX_DOCUMENT_BYTES = 1 << 20


def new_pkce() -> tuple[str, str]:
    """A PKCE pair (RFC 7636): ``(code_verifier, S256 code_challenge)``."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or :class:`TokenRefused`."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN68.fullmatch(token):
        raise TokenRefused("not a bearer token")
    return token


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    introspection_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str = ""


@dataclass(frozen=True)
class Login:
    """The result of an authorization code exchange, id token verified."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    id_claims: dict[str, Any] = field(repr=False)
    id_token: str = field(default="", repr=False)  # the id_token_hint of a later logout


class PscClient:
    def __init__(self, config: Any, connector: aiohttp.BaseConnector,
                 url_for: Callable[[str], str], *, clock: Callable[[], float] = time.time
                 ) -> None:
        """``config``: the ``[psc]`` section; ``connector``: to the gateway's egress socket;
        ``url_for(url)``: the egress URL of a PSC URL (``TlsGateway.url("psc", url)``)."""
        self.config = config
        self.audience = config.audience or config.client_id
        self._connector = connector
        self._url_for = url_for
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._discovery: Discovery | None = None
        self._discovery_lock: asyncio.Lock | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self.cache = IntrospectionCache(config.introspection_cache, clock)
        self.origin = origin_of(config.discovery_url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport -------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        return self._session

    async def _call(self, what: str, method: str, url: str, **kwargs: Any
                    ) -> tuple[int, Any]:
        """``(status, JSON body or None)``; :class:`PscUnavailable` when no answer came from
        PSC itself (network, gateway, timeout) or the body is not JSON when it should be."""
        try:
            target = self._url_for(url)
        except KeyError as e:  # TlsGateway.url: the gateway has no psc upstream
            raise PscUnavailable(f"PSC {what}: {e}") from None
        try:
            async with self._http().request(method, target, allow_redirects=False,
                                            **kwargs) as r:
                if r.headers.get(GATEWAY_ERROR_HEADER):
                    raise PscUnavailable(f"PSC {what}: gateway could not reach PSC "
                                         f"({r.headers[GATEWAY_ERROR_HEADER][:100]})")
                raw = await r.content.read(MAX_DOCUMENT_BYTES + 1)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise PscUnavailable(f"PSC {what}: unreachable ({type(e).__name__})") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise PscUnavailable(f"PSC {what}: answer too large")
        if status >= 500:
            raise PscUnavailable(f"PSC {what}: HTTP {status}")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            if status == 200:
                raise PscUnavailable(f"PSC {what}: answer is not JSON") from None
            body = None
        return status, body

    async def _backchannel(self, what: str, method: str, endpoint: str, **kwargs: Any
                           ) -> tuple[int, Any]:
        d = await self.discovery()
        try:
            return await self._call(what, method, getattr(d, endpoint), **kwargs)
        except PscUnavailable:
            self._discovery = None  # fetched again next time: PSC may have moved things
            raise

    # -- discovery -------------------------------------------------------------------------------

    async def discovery(self) -> Discovery:
        if self._discovery is not None:
            return self._discovery
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            if self._discovery is None:
                self._discovery = await self._fetch_discovery()
        return self._discovery

    async def _fetch_discovery(self) -> Discovery:
        status, doc = await self._call("discovery", "GET", self.config.discovery_url)
        if status != 200 or not isinstance(doc, dict):
            raise PscUnavailable(f"PSC discovery: HTTP {status}, no discovery document")
        values: dict[str, str] = {}
        for key in ("issuer", "authorization_endpoint", *BACK_CHANNEL):
            value = doc.get(key)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise PscUnavailable(f"PSC discovery: {key} missing or not a URL")
            values[key] = value
        expected = self.config.discovery_url
        if expected.endswith(WELL_KNOWN) and values["issuer"].rstrip("/") != \
                expected[:-len(WELL_KNOWN)].rstrip("/"):
            raise PscUnavailable("PSC discovery: issuer does not match psc.discovery_url")
        for key in BACK_CHANNEL:
            if origin_of(values[key]) != self.origin:
                raise PscUnavailable(
                    f"PSC discovery: {key} is on {origin_of(values[key])}, not on the origin of "
                    f"psc.discovery_url ({self.origin}) that the TLS gateway's psc upstream "
                    "reaches")
        end = doc.get("end_session_endpoint")
        return Discovery(**values, end_session_endpoint=end if isinstance(end, str) else "")

    # -- access tokens (the source side: a peer's read) ------------------------------------------

    async def introspect(self, token: str) -> Introspection:
        """RFC 7662 at PSC, through the cache."""
        return await self.cache.get(token, lambda: self._introspect(token))

    async def _introspect(self, token: str) -> Introspection:
        status, doc = await self._backchannel(
            "introspection", "POST", "introspection_endpoint",
            data={"token": token, "token_type_hint": "access_token",
                  "client_id": self.config.client_id})
        if status != 200:
            # 400/401: the box's request or its client authentication, not the token.
            err = doc.get("error", "") if isinstance(doc, dict) else ""
            raise PscUnavailable(f"PSC introspection: HTTP {status} {err}".rstrip())
        try:
            return Introspection.parse(doc)
        except ValueError as e:
            raise PscUnavailable(f"PSC introspection: {e}") from None

    async def check_access_token(self, token: str, audience: str | None = None
                                 ) -> Professional:
        """The professional behind ``token`` if PSC says it is active, unexpired, ``eidas1``
        and meant for ``audience`` (default ``psc.audience``, else ``psc.client_id``).
        Raises :class:`TokenRefused` (answer 401/403) or :class:`PscUnavailable` (503)."""
        if not isinstance(token, str) or not TOKEN68.fullmatch(token):
            raise TokenRefused("not a bearer token")
        audience = audience or self.audience
        result = await self.introspect(token)
        now = self._clock()
        if not result.active:
            raise TokenRefused("token expired" if _unverified_exp(token) < now
                               else "token inactive")
        if result.expires_at <= now:
            raise TokenRefused("token expired")
        if audience not in result.audiences:
            raise TokenRefused(f"token not for this box (audience {audience!r} not in it)")
        if result.acr != ACR:
            raise TokenRefused(f"authentication level {result.acr or 'none'!r} is not {ACR}")
        if not result.rpps:
            raise TokenRefused("token has no professional identifier")
        return Professional(result.rpps, result.subject, result.client_id, result.acr,
                            result.expires_at, result.audiences)

    # -- authorization code (the consumer side: a professional's login) ------------------------

    async def authorization_url(self, state: str, nonce: str, code_challenge: str,
                                redirect_uri: str) -> str:
        """Where to send the browser: PSC's authorize endpoint with PKCE S256 and eidas1."""
        d = await self.discovery()
        query = urlencode({"response_type": "code", "client_id": self.config.client_id,
                           "redirect_uri": redirect_uri, "scope": SCOPE, "acr_values": ACR,
                           "state": state, "nonce": nonce, "code_challenge": code_challenge,
                           "code_challenge_method": "S256"})
        sep = "&" if "?" in d.authorization_endpoint else "?"
        return f"{d.authorization_endpoint}{sep}{query}"

    async def exchange_code(self, code: str, code_verifier: str, redirect_uri: str,
                            nonce: str) -> Login:
        """The token request (mTLS through the gateway), then the id token verified."""
        status, doc = await self._backchannel(
            "token", "POST", "token_endpoint",
            data={"grant_type": "authorization_code", "code": code,
                  "redirect_uri": redirect_uri, "code_verifier": code_verifier,
                  "client_id": self.config.client_id})
        if status != 200 or not isinstance(doc, dict):
            err = doc.get("error", "") if isinstance(doc, dict) else ""
            if err in ("invalid_grant", "invalid_request"):
                raise TokenRefused(f"code refused ({err})")
            raise PscUnavailable(f"PSC token: HTTP {status} {err}".rstrip())
        for key in ("access_token", "id_token"):
            if not isinstance(doc.get(key), str):
                raise PscUnavailable(f"PSC token: no {key} in the answer")
        if str(doc.get("token_type", "")).lower() != "bearer":
            raise PscUnavailable("PSC token: token_type is not Bearer")
        claims = await self.verify_id_token(doc["id_token"], nonce)
        return Login(doc["access_token"], str(doc.get("refresh_token", "")),
                     int(doc.get("expires_in", 0)), claims, doc["id_token"])

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The id token's claims once its RS256 signature (PSC's JWKS), ``iss``, ``aud``,
        ``exp``, ``nonce`` and ``acr`` are checked; :class:`TokenRefused` otherwise."""
        d = await self.discovery()
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.PyJWTError:
            raise TokenRefused("id token is not a JWT") from None
        key = await self._signing_key(kid)
        try:
            claims = jwt.decode(id_token, key, algorithms=["RS256"],
                                audience=self.config.client_id, issuer=d.issuer, leeway=30,
                                options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenRefused("id token expired") from None
        except jwt.PyJWTError as e:
            raise TokenRefused(f"id token refused ({type(e).__name__})") from None
        if not nonce or not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise TokenRefused("id token nonce does not match")
        if claims.get("acr") != ACR:
            raise TokenRefused(f"id token acr is not {ACR}")
        return claims

    async def _signing_key(self, kid: str | None) -> Any:
        for attempt in (0, 1):
            if self._jwks is None or attempt:
                status, doc = await self._backchannel("jwks", "GET", "jwks_uri")
                if status != 200:
                    raise PscUnavailable(f"PSC jwks: HTTP {status}")
                try:
                    self._jwks = jwt.PyJWKSet.from_dict(doc)
                except (jwt.PyJWTError, TypeError, KeyError, AttributeError):
                    raise PscUnavailable("PSC jwks: not a usable key set") from None
            for k in self._jwks.keys:
                if k.key_id == kid and k.algorithm_name in ("RS256", None):
                    return k.key
        raise TokenRefused("id token signed with a key PSC does not publish")

    async def userinfo(self, access_token: str) -> Professional:
        status, doc = await self._backchannel(
            "userinfo", "GET", "userinfo_endpoint",
            headers={"Authorization": f"Bearer {access_token}"})
        if status == 401:
            raise TokenRefused("token inactive")
        if status != 200:
            raise PscUnavailable(f"PSC userinfo: HTTP {status}")
        try:
            return Professional.from_userinfo(doc)
        except ValueError as e:
            raise PscUnavailable(f"PSC userinfo: {e}") from None

    async def logout_url(self, id_token: str, post_logout_redirect_uri: str = "",
                         state: str = "") -> str:
        """Where to send the browser to end the PSC session (empty if PSC has no endpoint)."""
        d = await self.discovery()
        if not d.end_session_endpoint:
            return ""
        params = {"id_token_hint": id_token, "client_id": self.config.client_id}
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        return f"{d.end_session_endpoint}?{urlencode(params)}"


def _unverified_exp(token: str) -> float:
    """The ``exp`` a JWT says it has, unverified: only used to word a refusal."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        return float(exp) if isinstance(exp, int | float) else float("inf")
    except (jwt.PyJWTError, ValueError, TypeError):
        return float("inf")
