"""``start_psc(pki, workdir)``: the Pro Santé Connect simulator in its own process, and a handle
(:class:`Psc`) on its test-only control endpoints."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.dmp.pki import name, pem, write_key

REPO = Path(__file__).resolve().parents[3]


def start_psc(pki: Any, workdir: Path, *, users: list[dict[str, Any]] | None = None,
              clients: list[dict[str, Any]] | None = None,
              access_token_lifetime: float = 120) -> "Psc":
    """Start the simulator: a software server key generated now, its certificate from the test
    PKI's server CA (``127.0.0.1``), TLS client certificates verified against ``pki.bundle``."""
    from .server import DEFAULT_USERS

    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), name("psc-simulator.test"), "tls-server",
                     issuer="server", hosts=["127.0.0.1", "localhost"])
    server_ca = x509.load_pem_x509_certificate(pki.server_ca.read_bytes())
    (workdir / "server.pem").write_bytes(pem(cert, server_ca))
    write_key(workdir / "server.key", key)
    config = {"users": users if users is not None else DEFAULT_USERS,
              "clients": clients or [], "access_token_lifetime": access_token_lifetime}
    (workdir / "psc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.psc", "--port", "0",
                             "--cert", str(workdir / "server.pem"),
                             "--key", str(workdir / "server.key"), "--ca", str(pki.bundle),
                             "--config", str(workdir / "psc.json")],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        raise RuntimeError("the PSC simulator did not start")
    info = json.loads(line)
    return Psc(proc, info["url"], info["port"], info["issuer"], info["discovery_url"],
               Path(pki.bundle), ssl.create_default_context(cafile=str(pki.bundle)))


@dataclass
class Psc:
    proc: subprocess.Popen
    url: str              # https://127.0.0.1:<port>
    port: int
    issuer: str
    discovery_url: str
    ca_file: Path         # what verifies the simulator's server certificate
    ctx: ssl.SSLContext   # no client certificate: enough for /_test/ and the discovery

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            return json.loads(r.read())

    def register_client(self, client_id: str, redirect_uris: list[str], subject_dn: str, *,
                        audiences: list[str] | None = None,
                        post_logout_redirect_uris: list[str] | None = None) -> None:
        """Register an OIDC client authenticated by a TLS certificate whose subject DN (RFC 4514
        string, as ``cryptography``'s ``Name.rfc4514_string()``) is ``subject_dn``."""
        self._req("POST", "/_test/clients", {
            "client_id": client_id, "redirect_uris": redirect_uris,
            "tls_client_auth_subject_dn": subject_dn, "audiences": audiences or [],
            "post_logout_redirect_uris": post_logout_redirect_uris or []})

    def add_user(self, user: dict[str, Any]) -> None:
        self._req("POST", "/_test/users", user)

    def issue_token(self, user: str, client_id: str, *, audiences: list[str] | None = None,
                    lifetime: float | None = None, scope: str = "openid scope_all"
                    ) -> dict[str, Any]:
        """An access token as if ``user`` had logged in at ``client_id``: ``{"access_token",
        "expires_in", "exp", "jti", "sid"}``. ``audiences`` replaces the default audience list
        (the client_id and the client's registered extra audiences)."""
        body: dict[str, Any] = {"user": user, "client_id": client_id, "scope": scope}
        if audiences is not None:
            body["audiences"] = audiences
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self._req("POST", "/_test/tokens", body)

    def revoke(self, *, token: str | None = None, jti: str | None = None,
               sid: str | None = None) -> None:
        self._req("POST", "/_test/revoke", {k: v for k, v in
                                            {"token": token, "jti": jti, "sid": sid}.items()
                                            if v is not None})

    def calls(self, endpoint: str | None = None, **match: str) -> list[dict[str, Any]]:
        """Calls received, oldest first: ``{"endpoint", "method", "client_id", "client_dn",
        "time"}``; filtered on equal fields."""
        if endpoint:
            match["endpoint"] = endpoint
        query = f"?{urllib.parse.urlencode(match)}" if match else ""
        return self._req("GET", f"/_test/calls{query}")

    def clear_calls(self) -> None:
        self._req("DELETE", "/_test/calls")

    def fault(self, endpoint: str = "*", *, status: int | None = None,
              delay: float | None = None, garbage: bool = False, count: int = 1,
              json_body: Any = None) -> None:
        """The next ``count`` calls of ``endpoint`` (``introspect``, ``token``, ``discovery``,
        ``userinfo``, ``jwks``, ``authorize``, ``logout`` or ``*``) wait ``delay`` seconds, then
        answer ``json_body`` (with ``status``, default 200), ``status``, or a truncated JSON
        body (``garbage``)."""
        fault = {k: v for k, v in {"endpoint": endpoint, "status": status, "delay": delay,
                                   "garbage": garbage, "count": count}.items() if v is not None}
        if json_body is not None:
            fault["json"] = json_body
        self._req("POST", "/_test/faults", fault)

    def clear_faults(self) -> None:
        self._req("DELETE", "/_test/faults")

    def settings(self, **values: float) -> None:
        """``access_token_lifetime``, ``refresh_token_lifetime``, ``code_lifetime`` (seconds)."""
        self._req("POST", "/_test/settings", values)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        """``claims`` as a JWT signed RS256 with the simulator's key (header ``kid``: its own,
        or ``kid``)."""
        return self._req("POST", "/_test/sign", {"claims": claims, "kid": kid})["jwt"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
