"""The Pro Santé Connect simulator: OIDC authorization code with PKCE, mTLS client authentication
(RFC 8705 ``tls_client_auth``, never a client_secret), RS256 JWT access and id tokens, RFC 7662
introspection, userinfo in PSC's ``SubjectRefPro`` shape, end of session.

Strict on purpose: whatever the real PSC would refuse, this refuses, with the OAuth error code
the specifications give. Clients find every endpoint in the discovery document.

Test-only (they do not exist in the real service, and answer loopback callers only):
``/_test/clients`` (register a client), ``/_test/users``, ``/_test/tokens`` (issue an access
token without a browser), ``/_test/revoke``, ``/_test/calls`` (the call log),
``/_test/faults`` (503, slow answers, garbage JSON), ``/_test/settings`` (lifetimes),
``/_test/sign`` (any claims signed with the simulator's key).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

ACR = "eidas1"
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
LOOPBACK = ("127.0.0.1", "::1")


@dataclass
class Client:
    client_id: str
    redirect_uris: list[str]
    tls_client_auth_subject_dn: str
    audiences: list[str] = field(default_factory=list)        # extra audiences of its tokens
    post_logout_redirect_uris: list[str] = field(default_factory=list)


@dataclass
class Session:
    sid: str
    user: str
    client_id: str
    auth_time: int
    ended: bool = False


@dataclass
class Grant:
    """A code, an access token or a refresh token this server issued."""

    kind: str
    sid: str
    client_id: str
    exp: float
    redirect_uri: str = ""
    code_challenge: str = ""
    nonce: str = ""
    scope: str = ""
    used: bool = False
    revoked: bool = False
    children: list[str] = field(default_factory=list)  # tokens issued from this code


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Asks every client for a certificate (verified against ``ca``); requires it nowhere: the
    token and introspection endpoints refuse an unauthenticated client themselves."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _dn(name: x509.Name) -> str:
    return name.rfc4514_string()


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="psc"' if self.error == "invalid_client" \
                else f'Bearer error="{self.error}"'
        return web.json_response({"error": self.error, "error_description": self.description},
                                 status=self.status, headers=headers)


class PscSimulator:
    def __init__(self, *, cert: Path, key: Path, ca: Path, host: str = "127.0.0.1",
                 port: int = 0, config: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, port
        self._ssl = server_context(cert, key, ca)
        config = config or {}
        self.access_token_lifetime = float(config.get("access_token_lifetime", 120))
        self.refresh_token_lifetime = float(config.get("refresh_token_lifetime", 1800))
        self.code_lifetime = float(config.get("code_lifetime", 60))
        self.users: dict[str, dict[str, Any]] = {u["id"]: u for u in config.get("users", [])}
        self.clients: dict[str, Client] = {}
        for c in config.get("clients", []):
            self.register(c)
        self.key = rsa.generate_private_key(65537, 2048)
        self.kid = "psc-sim-" + secrets.token_hex(4)
        self.sessions: dict[str, Session] = {}
        self.grants: dict[str, Grant] = {}       # code, jti (access), refresh token -> grant
        self.calls: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/realms/esante-wallet"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        realm = "/auth/realms/esante-wallet"
        oidc = realm + "/protocol/openid-connect"
        app.add_routes([
            web.get(realm + "/.well-known/openid-configuration", self._discovery),
            web.get(oidc + "/auth", self._authorize_get),
            web.post(oidc + "/auth", self._authorize_post),
            web.post(oidc + "/token", self._token),
            web.post(oidc + "/token/introspect", self._introspect),
            web.get(oidc + "/userinfo", self._userinfo),
            web.post(oidc + "/userinfo", self._userinfo),
            web.get(oidc + "/certs", self._jwks),
            web.get(oidc + "/logout", self._logout),
            web.post(oidc + "/logout", self._logout),
            web.post("/_test/clients", self._t_client),
            web.post("/_test/users", self._t_user),
            web.post("/_test/tokens", self._t_token),
            web.post("/_test/revoke", self._t_revoke),
            web.get("/_test/calls", self._t_calls),
            web.delete("/_test/calls", self._t_clear_calls),
            web.post("/_test/faults", self._t_fault),
            web.delete("/_test/faults", self._t_clear_faults),
            web.post("/_test/settings", self._t_settings),
            web.post("/_test/sign", self._t_sign),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def register(self, c: dict[str, Any]) -> Client:
        for key in ("client_id", "redirect_uris", "tls_client_auth_subject_dn"):
            if key not in c:
                raise ValueError(f"client: {key} missing")
        client = Client(c["client_id"], list(c["redirect_uris"]),
                        c["tls_client_auth_subject_dn"], list(c.get("audiences", [])),
                        list(c.get("post_logout_redirect_uris", [])))
        self.clients[client.client_id] = client
        return client

    # -- helpers ---------------------------------------------------------------------------------

    async def _log_and_fault(self, request: web.Request, endpoint: str,
                             client_id: str = "") -> web.Response | None:
        self.calls.append({"endpoint": endpoint, "method": request.method,
                           "client_id": client_id, "time": time.time(),
                           "client_dn": self._client_dn(request)})
        for f in self.faults:
            if f.get("endpoint", "*") in ("*", endpoint) and f.get("count", 1) > 0:
                f["count"] = f.get("count", 1) - 1
                if f.get("delay"):
                    await asyncio.sleep(float(f["delay"]))
                if "json" in f:
                    return web.json_response(f["json"], status=int(f.get("status") or 200))
                if f.get("garbage"):
                    return web.Response(body=b'{"active": tru', content_type="application/json")
                if f.get("status"):
                    return web.Response(status=int(f["status"]), text="simulated fault")
                return None
        return None

    @staticmethod
    def _client_dn(request: web.Request) -> str:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        return _dn(x509.load_der_x509_certificate(der).subject) if der else ""

    def _authenticate(self, request: web.Request, form: Any) -> Client:
        """RFC 8705 tls_client_auth: the certificate of the TLS handshake, nothing else."""
        if "client_secret" in form or "client_assertion" in form or \
                request.headers.get("Authorization", "").lower().startswith("basic "):
            raise OAuthError("invalid_client", "client secrets are not accepted: "
                             "authenticate with a TLS client certificate (tls_client_auth)", 401)
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id", 401)
        dn = self._client_dn(request)
        if not dn:
            raise OAuthError("invalid_client", "no TLS client certificate", 401)
        if dn != client.tls_client_auth_subject_dn:
            raise OAuthError("invalid_client", "TLS client certificate subject does not match "
                             "the client's tls_client_auth_subject_dn", 401)
        return client

    def _jwt(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid, "typ": "JWT"})

    def _user_claims(self, user: dict[str, Any]) -> dict[str, Any]:
        return {"preferred_username": user["rpps"], "SubjectNameID": user["rpps"]}

    def _sub(self, user: dict[str, Any]) -> str:
        return f"f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:{user['rpps']}"

    def _access_token(self, session: Session, client: Client, scope: str,
                      audiences: list[str] | None = None, lifetime: float | None = None,
                      nonce: str = "") -> tuple[str, Grant, int]:
        user = self.users[session.user]
        now = int(time.time())
        life = int(self.access_token_lifetime if lifetime is None else lifetime)
        jti = secrets.token_hex(16)
        aud = audiences if audiences is not None else [client.client_id, *client.audiences]
        claims = {"iss": self.issuer, "sub": self._sub(user), "aud": aud, "exp": now + life,
                  "iat": now, "jti": jti, "typ": "Bearer", "azp": client.client_id,
                  "acr": ACR, "scope": scope, "sid": session.sid,
                  "auth_time": session.auth_time, **self._user_claims(user)}
        if nonce:
            claims["nonce"] = nonce
        grant = Grant("access", session.sid, client.client_id, now + life, scope=scope)
        self.grants[jti] = grant
        return self._jwt(claims), grant, life

    def _new_session(self, user: str, client: Client) -> Session:
        s = Session("sid-" + secrets.token_hex(8), user, client.client_id, int(time.time()))
        self.sessions[s.sid] = s
        return s

    def _tokens(self, session: Session, client: Client, scope: str, nonce: str,
                with_id_token: bool) -> tuple[dict[str, Any], list[str]]:
        access, grant, life = self._access_token(session, client, scope, nonce=nonce)
        refresh = "rt-" + secrets.token_urlsafe(32)
        self.grants[refresh] = Grant("refresh", session.sid, client.client_id,
                                     time.time() + self.refresh_token_lifetime, scope=scope,
                                     nonce=nonce)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": life, "refresh_token": refresh,
                                "refresh_expires_in": int(self.refresh_token_lifetime),
                                "scope": scope, "session_state": session.sid}
        if with_id_token:
            user = self.users[session.user]
            now = int(time.time())
            claims = {"iss": self.issuer, "sub": self._sub(user), "aud": client.client_id,
                      "exp": now + life, "iat": now, "auth_time": session.auth_time,
                      "acr": ACR, "azp": client.client_id, "sid": session.sid,
                      **self._user_claims(user)}
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = self._jwt(claims)
        jti = jwt.decode(access, options={"verify_signature": False})["jti"]
        return body, [jti, refresh]

    def _active_grant(self, token: str) -> tuple[dict[str, Any], Grant] | None:
        """The claims and grant of an access token this server issued and still honours."""
        try:
            claims = jwt.decode(token, self.key.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp", "jti"]},
                                issuer=self.issuer)
        except jwt.PyJWTError:
            return None
        grant = self.grants.get(claims["jti"])
        if grant is None or grant.kind != "access" or grant.revoked:
            return None
        session = self.sessions.get(grant.sid)
        if session is None or session.ended:
            return None
        return claims, grant

    # -- discovery, keys ---------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "discovery")) is not None:
            return fault
        oidc = self.issuer + "/protocol/openid-connect"
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": oidc + "/auth",
            "token_endpoint": oidc + "/token",
            "introspection_endpoint": oidc + "/token/introspect",
            "userinfo_endpoint": oidc + "/userinfo",
            "end_session_endpoint": oidc + "/logout",
            "jwks_uri": oidc + "/certs",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": False,
            "id_token_signing_alg_values_supported": ["RS256"],
            "acr_values_supported": [ACR],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "scope_all"],
            "claims_supported": ["sub", "preferred_username", "SubjectNameID", "given_name",
                                 "family_name", "SubjectRefPro", "acr"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "jwks")) is not None:
            return fault
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": [jwk]})

    # -- authorization endpoint ---------------------------------------------------------------------

    def _check_authorize(self, params: Any) -> tuple[Client, str, str]:
        """Raises ``web.HTTPBadRequest`` (shown, never redirected) for a bad client or redirect
        URI, or ``OAuthError`` (redirected to the client) for everything else."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise web.HTTPBadRequest(text=_page("Erreur", "Client inconnu (client_id)."),
                                     content_type="text/html")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise web.HTTPBadRequest(text=_page("Erreur", "redirect_uri non enregistrée."),
                                     content_type="text/html")
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        if "openid" not in params.get("scope", "").split():
            raise OAuthError("invalid_scope", "scope must contain openid")
        for name in ("state", "nonce"):
            if not params.get(name):
                raise OAuthError("invalid_request", f"{name} is required")
        if not params.get("code_challenge"):
            raise OAuthError("invalid_request", "PKCE is required (code_challenge)")
        if params.get("code_challenge_method") != "S256":
            raise OAuthError("invalid_request", "code_challenge_method must be S256")
        if ACR not in params.get("acr_values", "").split():
            raise OAuthError("invalid_request", f"acr_values must be {ACR}")
        return client, redirect_uri, params["state"]

    @staticmethod
    def _redirect(uri: str, **params: str) -> web.HTTPFound:
        sep = "&" if urlsplit(uri).query else "?"
        return web.HTTPFound(uri + sep + urlencode({k: v for k, v in params.items() if v}))

    async def _authorize_get(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "authorize")) is not None:
            return fault
        params = request.query
        try:
            self._check_authorize(params)
        except OAuthError as e:
            raise self._redirect(params["redirect_uri"], error=e.error,
                                 error_description=e.description,
                                 state=params.get("state", "")) from None
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" '
                         f'value="{html.escape(v)}">' for k, v in params.items())
        forms = []
        for uid, user in self.users.items():
            ex = user["exercices"][0]
            forms.append(f'<form method="post" action="{request.path}">{hidden}'
                         f'<input type="hidden" name="user" value="{html.escape(uid)}">'
                         f'<button type="submit">{html.escape(ex["prenomDexercice"])} '
                         f'{html.escape(ex["nomDexercice"])} ({html.escape(user["rpps"])})'
                         f'</button></form>')
        return web.Response(text=_page("Pro Santé Connect (simulateur)",
                                       "<p>Utilisateur de test :</p>" + "".join(forms)),
                            content_type="text/html")

    async def _authorize_post(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "authorize")) is not None:
            return fault
        params = await request.post()
        try:
            client, redirect_uri, state = self._check_authorize(params)
        except OAuthError as e:
            raise self._redirect(str(params["redirect_uri"]), error=e.error,
                                 error_description=e.description,
                                 state=str(params.get("state", ""))) from None
        user = str(params.get("user", ""))
        if user not in self.users:
            raise self._redirect(redirect_uri, error="access_denied",
                                 error_description="unknown test user", state=state)
        session = self._new_session(user, client)
        code = secrets.token_urlsafe(32)
        self.grants[code] = Grant("code", session.sid, client.client_id,
                                  time.time() + self.code_lifetime, redirect_uri=redirect_uri,
                                  code_challenge=str(params["code_challenge"]),
                                  nonce=str(params["nonce"]), scope=str(params["scope"]))
        raise self._redirect(redirect_uri, code=code, state=state,
                             session_state=session.sid)

    # -- token endpoint -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if (fault := await self._log_and_fault(request, "token",
                                               str(form.get("client_id", "")))) is not None:
            return fault
        try:
            client = self._authenticate(request, form)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                body = self._code_grant(client, form)
            elif grant_type == "refresh_token":
                body = self._refresh_grant(client, form)
            else:
                raise OAuthError("unsupported_grant_type", "unsupported grant_type")
        except OAuthError as e:
            return e.response()
        return web.json_response(body, headers={"Cache-Control": "no-store",
                                                "Pragma": "no-cache"})

    def _code_grant(self, client: Client, form: Any) -> dict[str, Any]:
        code = str(form.get("code", ""))
        grant = self.grants.get(code)
        if grant is None or grant.kind != "code":
            raise OAuthError("invalid_grant", "unknown code")
        if grant.used:
            # RFC 6749 §4.1.2: a code used twice revokes what it gave.
            for child in grant.children:
                if child in self.grants:
                    self.grants[child].revoked = True
            raise OAuthError("invalid_grant", "code already used")
        grant.used = True
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "code issued to another client")
        if time.time() > grant.exp:
            raise OAuthError("invalid_grant", "code expired")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization "
                             "request")
        verifier = str(form.get("code_verifier", ""))
        if not verifier:
            raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
        if not PKCE_VERIFIER.fullmatch(verifier) or _s256(verifier) != grant.code_challenge:
            raise OAuthError("invalid_grant", "PKCE verification failed")
        session = self.sessions[grant.sid]
        body, issued = self._tokens(session, client, grant.scope, grant.nonce, True)
        grant.children += issued
        return body

    def _refresh_grant(self, client: Client, form: Any) -> dict[str, Any]:
        token = str(form.get("refresh_token", ""))
        grant = self.grants.get(token)
        if grant is None or grant.kind != "refresh" or grant.revoked or grant.used:
            raise OAuthError("invalid_grant", "refresh token not active")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "refresh token issued to another client")
        session = self.sessions.get(grant.sid)
        if time.time() > grant.exp or session is None or session.ended:
            raise OAuthError("invalid_grant", "session not active")
        grant.used = True  # rotation: one use each
        body, _ = self._tokens(session, client, grant.scope, grant.nonce, True)
        return body

    # -- introspection, userinfo, logout ---------------------------------------------------------

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        if (fault := await self._log_and_fault(request, "introspect",
                                               str(form.get("client_id", "")))) is not None:
            return fault
        try:
            self._authenticate(request, form)
        except OAuthError as e:
            return e.response()
        if "token" not in form:
            return OAuthError("invalid_request", "token is required").response()
        found = self._active_grant(str(form["token"]))
        if found is None:
            return web.json_response({"active": False})
        claims, _grant = found
        keep = ("aud", "exp", "iat", "sub", "scope", "acr", "preferred_username",
                "SubjectNameID", "iss", "jti", "azp", "auth_time", "sid")
        return web.json_response({"active": True, "client_id": claims["azp"],
                                  "token_type": "Bearer",
                                  **{k: claims[k] for k in keep if k in claims}})

    async def _userinfo(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "userinfo")) is not None:
            return fault
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return OAuthError("invalid_request", "Bearer token required", 401).response()
        found = self._active_grant(auth[7:].strip())
        if found is None:
            return OAuthError("invalid_token", "token not active", 401).response()
        user = self.users[self.sessions[found[1].sid].user]
        return web.json_response(userinfo(user, self._sub(user)))

    async def _logout(self, request: web.Request) -> web.Response:
        if (fault := await self._log_and_fault(request, "logout")) is not None:
            return fault
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        sid = ""
        client_id = params.get("client_id", "")
        if params.get("id_token_hint"):
            try:
                hint = jwt.decode(params["id_token_hint"], self.key.public_key(),
                                  algorithms=["RS256"], issuer=self.issuer,
                                  options={"verify_exp": False, "verify_aud": False})
            except jwt.PyJWTError:
                raise web.HTTPBadRequest(text=_page("Erreur", "id_token_hint invalide"),
                                         content_type="text/html") from None
            sid, client_id = hint.get("sid", ""), hint.get("aud", client_id)
        elif params.get("refresh_token"):
            grant = self.grants.get(params["refresh_token"])
            sid = grant.sid if grant else ""
        if sid in self.sessions:
            self.sessions[sid].ended = True
        client = self.clients.get(client_id)
        target = params.get("post_logout_redirect_uri", "")
        if target:
            if client is None or target not in client.post_logout_redirect_uris:
                raise web.HTTPBadRequest(text=_page("Erreur", "post_logout_redirect_uri "
                                                    "non enregistrée"),
                                         content_type="text/html")
            raise self._redirect(target, state=params.get("state", ""))
        return web.Response(text=_page("Déconnexion", "Vous êtes déconnecté."),
                            content_type="text/html")

    # -- test-only control endpoints ------------------------------------------------------------

    @staticmethod
    def _loopback(request: web.Request) -> None:
        if request.remote not in LOOPBACK:
            raise web.HTTPForbidden(text="test endpoints answer loopback callers only")

    async def _t_client(self, request: web.Request) -> web.Response:
        self._loopback(request)
        try:
            client = self.register(await request.json())
        except (ValueError, TypeError) as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return web.json_response({"client_id": client.client_id})

    async def _t_user(self, request: web.Request) -> web.Response:
        self._loopback(request)
        user = await request.json()
        self.users[user["id"]] = user
        return web.json_response({"id": user["id"]})

    async def _t_token(self, request: web.Request) -> web.Response:
        self._loopback(request)
        body = await request.json()
        client = self.clients.get(body.get("client_id", ""))
        if client is None or body.get("user") not in self.users:
            raise web.HTTPBadRequest(text="unknown client_id or user")
        session = self._new_session(body["user"], client)
        token, grant, life = self._access_token(
            session, client, body.get("scope", "openid scope_all"), body.get("audiences"),
            body.get("lifetime"))
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        return web.json_response({"access_token": token, "expires_in": life, "jti": jti,
                                  "sid": session.sid, "exp": grant.exp})

    async def _t_revoke(self, request: web.Request) -> web.Response:
        self._loopback(request)
        body = await request.json()
        key = body.get("jti") or body.get("token", "")
        if "token" in body and key not in self.grants:
            try:
                key = jwt.decode(key, options={"verify_signature": False}).get("jti", "")
            except jwt.PyJWTError:
                key = ""
        if key in self.grants:
            self.grants[key].revoked = True
        if body.get("sid") in self.sessions:
            self.sessions[body["sid"]].ended = True
        return web.json_response({"revoked": key in self.grants or "sid" in body})

    async def _t_calls(self, request: web.Request) -> web.Response:
        self._loopback(request)
        calls = [c for c in self.calls
                 if all(c.get(k) == v for k, v in request.query.items())]
        return web.json_response(calls)

    async def _t_clear_calls(self, request: web.Request) -> web.Response:
        self._loopback(request)
        self.calls.clear()
        return web.json_response({})

    async def _t_fault(self, request: web.Request) -> web.Response:
        self._loopback(request)
        self.faults.append(await request.json())
        return web.json_response({})

    async def _t_clear_faults(self, request: web.Request) -> web.Response:
        self._loopback(request)
        self.faults.clear()
        return web.json_response({})

    async def _t_sign(self, request: web.Request) -> web.Response:
        """Any claims signed with the simulator's key (tests of a client's JWT checks)."""
        self._loopback(request)
        body = await request.json()
        return web.json_response({"jwt": self._jwt(body["claims"], kid=body.get("kid"))})

    async def _t_settings(self, request: web.Request) -> web.Response:
        self._loopback(request)
        body = await request.json()
        for key in ("access_token_lifetime", "refresh_token_lifetime", "code_lifetime"):
            if key in body:
                setattr(self, key, float(body[key]))
        return web.json_response({})


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                    ).rstrip(b"=").decode()


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=fr><meta charset=utf-8><title>{html.escape(title)}"
            f"</title><h1>{html.escape(title)}</h1>{body}</html>")


ACTIVITY_FIELDS = ("codeModeExercice", "codeSecteurDactivite", "codeSectionPharmacien",
                   "codeRole", "codeGenreActivite", "numeroSiretSite", "numeroSirenSite",
                   "numeroFinessSite", "numeroFinessetablissementJuridique",
                   "identifiantTechniqueDeLaStructure", "raisonSocialeSite",
                   "enseigneCommercialeSite", "complementDestinataire",
                   "complementPointGeographique", "numeroVoie", "indiceRepetitionVoie",
                   "codeTypeDeVoie", "libelleVoie", "mentionDistribution", "bureauCedex",
                   "codePostal", "codeCommune", "codePays", "telephone", "telephone2",
                   "telecopie", "adresseEMail", "codeDepartement",
                   "ancienIdentifiantDeLaStructure", "autoriteDenregistrement")
EXERCICE_FIELDS = ("codeProfession", "codeCategorieProfessionnelle", "codeCiviliteDexercice",
                   "nomDexercice", "prenomDexercice", "codeTypeSavoirFaire", "codeSavoirFaire")


def userinfo(user: dict[str, Any], sub: str) -> dict[str, Any]:
    """The userinfo document of a test user, shaped like PSC's (every field present, empty
    strings where the directory has nothing, as the real service answers)."""
    exercices = []
    for ex in user["exercices"]:
        activities = [{k: str(a.get(k, "")) for k in ACTIVITY_FIELDS}
                      for a in ex.get("activities", [])]
        exercices.append({**{k: str(ex.get(k, "")) for k in EXERCICE_FIELDS},
                          "activities": activities})
    first = exercices[0]
    act = first["activities"][0] if first["activities"] else {}
    return {
        "sub": sub,
        "SubjectNameID": user["rpps"],
        "preferred_username": user["rpps"],
        "given_name": first["prenomDexercice"],
        "family_name": first["nomDexercice"],
        "email_verified": False,
        "SubjectOrganization": act.get("raisonSocialeSite", ""),
        "SubjectOrganizationID": act.get("identifiantTechniqueDeLaStructure", ""),
        "SubjectRole": [f"{first['codeProfession']}^1.2.250.1.213.1.1.5.5"],
        "Secteur_Activite": f"{act.get('codeSecteurDactivite', '')}^1.2.250.1.71.4.2.4",
        "Palier_Authentification": "APPPRIP3^1.2.250.1.213.1.5.1.1.1",
        "otherIds": [{"identifiant": user["rpps"], "origine": "RPPS", "qualite": 1}],
        "SubjectRefPro": {"codeCivilite": user.get("codeCivilite", ""),
                          "exercices": exercices},
    }


DEFAULT_USERS = [
    {"id": "radiologue", "rpps": "899700218896", "codeCivilite": "M",
     "exercices": [{"codeProfession": "10", "codeCategorieProfessionnelle": "C",
                    "codeCiviliteDexercice": "DR", "nomDexercice": "RADIOLOGUE0021889",
                    "prenomDexercice": "ROBERT", "codeTypeSavoirFaire": "S",
                    "codeSavoirFaire": "SM44",
                    "activities": [
                        {"codeModeExercice": "L", "codeSecteurDactivite": "SA07",
                         "identifiantTechniqueDeLaStructure": "R10000",
                         "raisonSocialeSite": "CABINET RADIOLOGIE TEST",
                         "ancienIdentifiantDeLaStructure": "499700367909006",
                         "codePostal": "75009"},
                        {"codeModeExercice": "S", "codeSecteurDactivite": "SA01",
                         "numeroFinessSite": "0B0172805",
                         "identifiantTechniqueDeLaStructure": "F0B0172805",
                         "raisonSocialeSite": "HOPITAL GENERIQUE TEST",
                         "ancienIdentifiantDeLaStructure": "10B0172805"}]}]},
    {"id": "generaliste", "rpps": "899700366240", "codeCivilite": "MME",
     "exercices": [{"codeProfession": "10", "codeCategorieProfessionnelle": "C",
                    "codeCiviliteDexercice": "DR", "nomDexercice": "DOC0036624",
                    "prenomDexercice": "CAMILLE", "codeTypeSavoirFaire": "S",
                    "codeSavoirFaire": "SM54",
                    "activities": [
                        {"codeModeExercice": "L", "codeSecteurDactivite": "SA07",
                         "raisonSocialeSite": "CABINET M DOC0036624",
                         "ancienIdentifiantDeLaStructure": "499700366240007"}]}]},
]
