"""The one guard every DICOMweb request goes through: default deny.

A request reads patient data only on one of three grounds (checked here, never per handler):

1. **peer box**: mutual TLS through the TLS gateway (the gateway verified the chain during the
   handshake and passes the certificate on); here the certificate is checked again against the
   anchors, with its dates and its TLS-client usage, and its subject must be the
   ``DNCertificatOperateur`` of a domain of the current national whitelist. Then a Pro Santé
   Connect access token (``Authorization: Bearer``) that introspection says is active, for this
   box's audience and not expired; and ``KOS-SOPInstanceUID`` naming a KOS this box published
   for that study and has not withdrawn or replaced. The peer then sees only the series and
   instances that KOS lists: anything else is 404, the same answer as an unknown study.
2. **viewer session**: a professional logged in on this box (``drimbox_session`` cookie); the
   session sees only the exams it was granted.
3. **site tool**: a request from an address of ``dicomweb.open_to`` (default none).

Anything else is 401 or 403 with a short JSON reason. Every refusal writes an audit row (who,
what, status, reason); what is served is audited by the handler with the bytes it sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.audit import AuditUnavailable, AuditWriter, Who
from appliance.keys import certs
from appliance.psc.errors import PscUnavailable, TokenRefused
from appliance.psc.model import Professional
from appliance.store import valid_uid
from appliance.web.server import client_certificate

from .crl import CrlUnavailable, Revoked, http_distribution_points
from .published import EVERYTHING, PublishedKos, Visible
from .sessions import COOKIE, SessionStore
from .whitelist import Whitelist

log = logging.getLogger(__name__)

KOS_HEADER = "KOS-SOPInstanceUID"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenChecker(Protocol):
    """Pro Santé Connect's verdict on an access token (``appliance.psc.link.PscLink``)."""

    async def check_access_token(self, token: str, audience: str) -> Professional: ...


@dataclass(frozen=True)
class Access:
    """Why a request may read, who it is, and what it may see."""

    ground: str           # peer, session, site
    who: Who
    visible: Visible


_ACCESS = web.RequestKey("drimbox_access", Access)


def access_of(request: web.Request) -> Access:
    """The access the guard granted this request (handlers run only behind the guard)."""
    return request[_ACCESS]


class Refused(Exception):
    def __init__(self, status: int, reason: str, public: str | None = None, *,
                 who: Who | None = None, bearer_error: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason            # for the audit trail
        self.public = public or reason  # for the client: never more than the reason
        self.who = who
        self.bearer_error = bearer_error


NOT_FOUND = "not found"   # one answer for unknown, out-of-KOS and withdrawn alike


@dataclass
class Guard:
    """``middleware`` goes on the DICOMweb application, which also sets ``audit`` and
    ``patient_of`` (:func:`appliance.dicomweb.make_app`); everything else is injected."""

    sessions: SessionStore | None = None
    published: PublishedKos | None = None
    anchors: Callable[[], Sequence[x509.Certificate]] = lambda: ()
    whitelist: Callable[[], Whitelist | None] = lambda: None
    tokens: Callable[[], TokenChecker | None] = lambda: None
    audience: str = ""
    # The peer certificate's CRL check (appliance.trust.crl.CrlSource); None = not checked.
    revocation: Any = None
    open_to: Sequence[str] = ()
    max_per_peer: int = 4
    request_timeout: float = 600.0
    audit: AuditWriter | None = None
    patient_of: Callable[[str], str] = lambda _study: ""   # blocking: the store's lookup
    _networks: list[Any] = field(default_factory=list, init=False)
    _busy: dict[str, int] = field(default_factory=dict, init=False)
    # Certificates that passed: DER -> until when (see _check_certificate). Checking a chain
    # costs ~130 us of signature checks; a peer presents the same certificate each time.
    _verified: dict[bytes, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in self.open_to]

    # -- the middleware ------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":      # CORS preflight: answered without data
            return await handler(request)
        key = ""
        try:
            access = await self._decide(request)
            key = access.who.peer_dn if access.ground == "peer" else ""
            if key and self._busy.get(key, 0) >= self.max_per_peer:
                raise Refused(429, f"more than {self.max_per_peer} concurrent requests from "
                              "this peer (dicomweb.max_concurrent_per_peer)", who=access.who)
        except Refused as r:
            await self._refusal(request, r)
            headers = {}
            if r.status == 401:
                headers["WWW-Authenticate"] = ("Bearer" + (f' error="{r.bearer_error}"'
                                                           if r.bearer_error else ""))
            if r.status == 429:
                headers["Retry-After"] = "1"
            return web.json_response({"status": r.status, "reason": r.public},
                                     status=r.status, headers=headers)
        request[_ACCESS] = access
        if key:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            async with asyncio.timeout(self.request_timeout):
                return await handler(request)
        except web.HTTPException as e:
            # The handler's own no (unknown instance, bad query, not acceptable): audited
            # like the guard's, so every decision leaves a row.
            if e.status >= 400:
                await self._refusal(request, Refused(e.status, (e.text or e.reason).strip(),
                                                     who=access.who))
            raise
        except TimeoutError:
            log.warning("dicomweb request timed out", extra={"ground": access.ground})
            return web.json_response({"status": 503, "reason": "request timed out"}, status=503)
        finally:
            if key:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]

    # -- the decision --------------------------------------------------------------------------
    async def _decide(self, request: web.Request) -> Access:
        try:
            cert = client_certificate(request)
        except web.HTTPBadRequest:
            raise Refused(400, "malformed client certificate header") from None
        if cert is not None:
            access = await self._peer(request, cert)
        elif COOKIE in request.cookies and self.sessions is not None:
            access = await self._session(request.cookies[COOKIE])
        elif self._open_to(request.remote):
            access = Access("site", Who(f"site:{request.remote}"), EVERYTHING)
        else:
            raise Refused(401, "authentication required: a peer box presents its certificate "
                          "and a Pro Santé Connect token; a professional logs in on this box")
        self._check_path(request, access)
        return access

    async def _peer(self, request: web.Request, cert: x509.Certificate) -> Access:
        dn = cert.subject.rfc4514_string()
        who = Who(f"peer:{dn}", peer_dn=dn, structure=certs.structure_id(cert) or "")
        await self._verify_certificate(cert, who)
        whitelist = self.whitelist()
        if whitelist is None:
            raise Refused(403, "no verified national whitelist: peer boxes are refused",
                          who=who)
        domain = whitelist.domain_for_subject(cert.subject)
        if domain is None:
            raise Refused(403, "the certificate's structure is not on the national whitelist",
                          who=who)
        who = dataclasses.replace(who, structure=domain.identifier or who.structure)
        token = _bearer(request)
        if token is None:
            raise Refused(401, "a Pro Santé Connect access token is required "
                          "(Authorization: Bearer)", who=who)
        checker = self.tokens()
        if checker is None:
            raise Refused(403, "this box checks no Pro Santé Connect token (psc.enabled is "
                          "false): peer boxes are refused", who=who)
        try:
            pro = await checker.check_access_token(token, self.audience)
        except TokenRefused as e:
            raise Refused(401, f"access token refused: {e}", who=who,
                          bearer_error="invalid_token") from None
        except PscUnavailable as e:
            raise Refused(503, f"Pro Santé Connect unavailable: {e}",
                          "the access token cannot be checked now; try again", who=who) from None
        who = dataclasses.replace(who, professional=pro.rpps)
        kos = request.headers.get(KOS_HEADER, "").strip()
        if not kos:
            raise Refused(400, f"the {KOS_HEADER} header is required", who=who)
        if not valid_uid(kos):
            raise Refused(400, f"{KOS_HEADER} is not a valid UID", who=who)
        if self.published is None:
            raise Refused(404, "this box publishes nothing (roles.source is false)", NOT_FOUND,
                          who=who)
        opened = await asyncio.get_running_loop().run_in_executor(
            None, self.published.open, kos, request.match_info.get("study"))
        if opened.visible is None:
            raise Refused(404, opened.reason, NOT_FOUND, who=who)
        return Access("peer", who, opened.visible)

    async def _verify_certificate(self, cert: x509.Certificate, who: Who) -> None:
        """Refused (403, or 503 when its CRL cannot be had) unless the certificate passes
        :meth:`_check_certificate`; a pass is remembered until it stops holding."""
        der = cert.public_bytes(Encoding.DER)
        until = self._verified.get(der)
        if until is not None and time.time() < until:
            return
        try:
            until = await asyncio.get_running_loop().run_in_executor(
                None, self._check_certificate, cert)
        except (certs.CertificateRefused, Revoked) as e:
            raise Refused(403, f"client certificate refused: {e}", who=who) from None
        except CrlUnavailable as e:
            if not http_distribution_points(cert):   # the certificate's fault
                raise Refused(403, f"client certificate refused: {e}", who=who) from None
            raise Refused(503, f"revocation status unavailable: {e}",
                          "the certificate's revocation status cannot be checked now; "
                          "try again", who=who) from None
        if len(self._verified) >= 1024:
            self._verified.clear()
        self._verified[der] = until

    def _check_certificate(self, cert: x509.Certificate) -> float:
        """TLS-client usage, dates, the chain to the anchors and, when configured, the issuer's
        CRL (blocking: from an executor). Returns until when the verdict holds: the first
        expiry in the chain or the CRL's nextUpdate, whichever comes first."""
        anchors = self.anchors()
        if not anchors:
            raise certs.CertificateRefused("no trust anchor configured (hsm.trust_anchors)")
        certs.check_usage(cert, "tls-client")
        chain = certs.validate_chain(cert, anchors)
        until = min(c.not_valid_after_utc.timestamp() for c in chain)
        if self.revocation is not None and len(chain) > 1:
            status = self.revocation.check(cert, chain[1])
            until = min(until, status.next_update.timestamp())
        return until

    async def _session(self, session_id: str) -> Access:
        assert self.sessions is not None
        session = await asyncio.get_running_loop().run_in_executor(None, self.sessions.get,
                                                                   session_id)
        if session is None:
            raise Refused(401, "viewer session unknown or expired: log in again")
        who = Who(f"pro:{session.professional}", structure=session.structure,
                  professional=session.professional)
        return Access("session", who, Visible(session.studies))

    def _open_to(self, remote: str | None) -> bool:
        if not remote or not self._networks:
            return False
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(addr in n for n in self._networks)

    @staticmethod
    def _check_path(request: web.Request, access: Access) -> None:
        m = request.match_info
        if not access.visible.allows(m.get("study"), m.get("series"), m.get("sop")):
            what = "instance" if "sop" in m else "series" if "series" in m else "study"
            raise Refused(404, f"{what} not visible to this {access.ground}"
                          + (" (not in the KOS)" if access.ground == "peer" else ""),
                          NOT_FOUND, who=access.who)

    async def _refusal(self, request: web.Request, r: Refused) -> None:
        m = request.match_info
        study = m.get("study", "") if valid_uid(m.get("study", "")) else ""
        patient = ""
        if study:
            patient = await asyncio.get_running_loop().run_in_executor(None, self.patient_of,
                                                                       study)
        who = r.who or Who(f"http:{request.remote or '-'}")
        log.warning("dicomweb request refused", extra={"status": r.status, "reason": r.reason,
                                                       "route": m.route.name or "-"})
        if self.audit is None:
            raise RuntimeError("the guard has no audit trail: mount it with dicomweb.make_app")
        try:
            self.audit.record(
                who, "dicomweb.refused", "http", patient_id=patient, study_uid=study,
                series_uid=m.get("series", "") if valid_uid(m.get("series", "")) else "",
                outcome="refused", status=r.status, reason=r.reason[:500],
                detail=f"{request.method} {m.route.name or 'unknown route'}")
        except AuditUnavailable:
            log.error("audit trail unavailable: a refusal was not recorded")


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
