"""Revocation of the whitelist signer's chain by CRL (RFC 5280 §6.3, no delta CRLs).

The national rules allow CRLs over plain HTTP (PROTOCOLS.md §5): only ``http://`` distribution
points are used (``ldap://`` ones are ignored), redirects may only lead to http(s), a CRL larger
than :data:`MAX_CRL_BYTES` is refused. A CRL is used only once its signature verifies with the
issuer's key and while it is current (``nextUpdate`` not passed).

:class:`CrlSource` is synchronous (blocking network I/O): the daemon calls it from a worker
thread (``asyncio.to_thread``), never on the event loop. Fetched CRLs are kept in memory and in a
cache directory until their ``nextUpdate``; local CRL files (``drimbox whitelist verify --crl``)
are consulted first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 10 * 1024 * 1024


class CrlUnavailable(Exception):
    """No current, correctly signed CRL could be obtained for a certificate."""


class Revoked(Exception):
    """A CRL lists the certificate as revoked."""

    def __init__(self, where: str, subject: str, since: dt.datetime) -> None:
        super().__init__(f"CRL {where} lists the certificate {subject} as revoked since "
                         f"{since:%Y-%m-%d %H:%M}Z")
        self.where, self.subject, self.since = where, subject, since


@dataclass(frozen=True)
class CrlStatus:
    """What the check found for one certificate."""

    subject: str
    url: str  # where the CRL came from (URL or file path)
    next_update: dt.datetime


def http_distribution_points(cert: x509.Certificate) -> list[str]:
    """The ``http://`` CRL distribution points of ``cert`` (ldap: and others ignored)."""
    try:
        dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for dp in dps:
        for gn in dp.full_name or ():
            if isinstance(gn, x509.UniformResourceIdentifier) and \
                    urllib.parse.urlsplit(gn.value).scheme.lower() == "http":
                out.append(gn.value)
    return out


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    try:
        return crl.is_signature_valid(key)
    except (ValueError, TypeError):
        return False


def _next_update(crl: x509.CertificateRevocationList) -> dt.datetime | None:
    return crl.next_update_utc


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to a {scheme or 'relative'}: URL refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


class CrlSource:
    """CRLs for the chain check: local files, then the memory and disk cache, then HTTP."""

    def __init__(self, cache_dir: Path | None = None, *, timeout: float = 20.0,
                 local: Iterable[Path] = ()) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout = timeout
        self._mem: dict[str, x509.CertificateRevocationList] = {}
        self._lock = threading.Lock()
        self._local: list[tuple[str, x509.CertificateRevocationList]] = []
        for p in local:
            try:
                self._local.append((str(p), _load_crl(Path(p).read_bytes())))
            except (OSError, ValueError) as e:
                raise CrlUnavailable(f"cannot read CRL file {p}: {e}") from None

    # ------------------------------------------------------------ fetching

    def _cache_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".crl")

    def _download(self, url: str) -> bytes:
        opener = urllib.request.build_opener(_Redirects)
        req = urllib.request.Request(url, headers={"User-Agent": "drimbox-crl"})
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > MAX_CRL_BYTES:
                    raise CrlUnavailable(f"CRL {url} unreachable: {length} bytes, larger "
                                         f"than {MAX_CRL_BYTES} bytes")
                data = resp.read(MAX_CRL_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise CrlUnavailable(f"CRL {url} unreachable: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise CrlUnavailable(f"CRL {url} unreachable: {reason}") from None
        if len(data) > MAX_CRL_BYTES:
            raise CrlUnavailable(f"CRL {url} unreachable: larger than {MAX_CRL_BYTES} bytes")
        return data

    def _current(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate,
                 at: dt.datetime) -> bool:
        nu = _next_update(crl)
        return (_signed_by(crl, issuer) and nu is not None and nu >= at
                and crl.last_update_utc <= at + dt.timedelta(minutes=10))

    def _fetch(self, url: str, issuer: x509.Certificate,
               at: dt.datetime) -> x509.CertificateRevocationList:
        with self._lock:
            crl = self._mem.get(url)
        if crl is not None and self._current(crl, issuer, at):
            return crl
        path = self._cache_path(url)
        if path is not None and path.is_file():
            try:
                crl = _load_crl(path.read_bytes())
                if self._current(crl, issuer, at):
                    with self._lock:
                        self._mem[url] = crl
                    return crl
            except (OSError, ValueError):
                pass  # a damaged cache entry is fetched again
        data = self._download(url)
        try:
            crl = _load_crl(data)
        except ValueError:
            raise CrlUnavailable(f"CRL {url} unreachable: not a CRL") from None
        if not _signed_by(crl, issuer):
            raise CrlUnavailable(f"CRL {url} is not signed by {issuer.subject.rfc4514_string()}")
        nu = _next_update(crl)
        if nu is None or nu < at:
            raise CrlUnavailable(f"CRL {url} is out of date (nextUpdate "
                                 f"{nu:%Y-%m-%d %H:%M}Z)" if nu else f"CRL {url} has no "
                                 "nextUpdate")
        with self._lock:
            self._mem[url] = crl
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as e:
                log.warning("cannot cache CRL %s: %s", url, e)
        return crl

    # ------------------------------------------------------------ checking

    def check(self, cert: x509.Certificate, issuer: x509.Certificate,
              at: dt.datetime | None = None) -> CrlStatus:
        """Raise :class:`Revoked` or :class:`CrlUnavailable`; else say which CRL cleared it."""
        at = at or dt.datetime.now(dt.UTC)
        subject = cert.subject.rfc4514_string()
        for name, crl in self._local:
            if self._current(crl, issuer, at):
                return self._lookup(cert, crl, name, subject)
        urls = http_distribution_points(cert)
        if not urls:
            raise CrlUnavailable(f"certificate {subject} has no http CRL distribution point")
        errors: list[str] = []
        for url in urls:
            try:
                crl = self._fetch(url, issuer, at)
            except CrlUnavailable as e:
                errors.append(str(e))
                continue
            return self._lookup(cert, crl, url, subject)
        raise CrlUnavailable("; ".join(errors))

    @staticmethod
    def _lookup(cert: x509.Certificate, crl: x509.CertificateRevocationList, where: str,
                subject: str) -> CrlStatus:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise Revoked(where, subject, entry.revocation_date_utc)
        nu = _next_update(crl)
        assert nu is not None
        return CrlStatus(subject, where, nu)
