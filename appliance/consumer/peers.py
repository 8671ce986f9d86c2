"""Is a RetrieveURL read from a KOS safe for the box to fetch?

A KOS comes from the DMP but was written by another box: its RetrieveURLs are untrusted input that
would make the consumer open an outbound connection. Default deny: https only, a DNS name (an IP
literal only when allowed), no credentials, query or fragment, and exactly the WADO-RS series path
``{prefix}/studies/{study uid}/series/{series uid}`` with valid UIDs. The signed DRIM-M whitelist
(a later issue) plugs in as ``UrlPolicy.host_allowed``.

Hand-written on top of :func:`urllib.parse.urlsplit`: no library checks this DRIM-M path shape.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from appliance.dicom.uids import is_valid_uid

__all__ = ["DEFAULT_PREFIXES", "RetrieveTarget", "RetrieveUrlError", "UrlPolicy",
           "check_retrieve_url"]

# "/dicom-web": this box's own layout (appliance.dicom.kos); "/api/source": the ANS demonstrator;
# "/dicom-web-rs": the ANS referencing platform (DRIM-M_DATA WADO-RS validator samples).
DEFAULT_PREFIXES = ("/dicom-web", "/api/source", "/dicom-web-rs")
MAX_URL_LENGTH = 2048
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f%\\]")


class RetrieveUrlError(ValueError):
    """The RetrieveURL must not be fetched; the message says why (it never repeats the URL)."""


@dataclass(frozen=True)
class RetrieveTarget:
    """A checked RetrieveURL, split into what the fetcher needs."""

    url: str
    host: str            # lower case; an IPv6 literal without its brackets
    port: int
    prefix: str          # e.g. "/dicom-web"
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class UrlPolicy:
    allow_ip_literals: bool = False      # tests and lab set-ups only
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    # The signed whitelist's check (later issue): True when ``host`` is a listed DRIMbox "db" host.
    # None means no whitelist is loaded yet: any well-formed DNS name passes.
    host_allowed: Callable[[str], bool] | None = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_dns_name(host: str) -> None:
    if len(host) > 253:
        raise RetrieveUrlError("host name is longer than 253 characters")
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise RetrieveUrlError("host is not a valid DNS name")
    # "127.1", "2130706433" or "0x7f.1" are IPv4 addresses to many resolvers: a real DNS name
    # never ends in an all-numeric label.
    if _NUMERIC.fullmatch(labels[-1]):
        raise RetrieveUrlError("host looks like a numeric IP address")


def check_retrieve_url(url: str, policy: UrlPolicy | None = None) -> RetrieveTarget:
    """The parts of ``url`` when the box may fetch it, else :class:`RetrieveUrlError`."""
    policy = policy or UrlPolicy()
    if not isinstance(url, str) or not url:
        raise RetrieveUrlError("RetrieveURL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise RetrieveUrlError(f"RetrieveURL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or _BAD_CHARS.search(url):
        raise RetrieveUrlError("RetrieveURL holds spaces, control characters, '%' or '\\'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise RetrieveUrlError(f"RetrieveURL does not parse: {e}") from None
    if parts.scheme != "https":
        raise RetrieveUrlError("RetrieveURL is not https")
    if "@" in parts.netloc:
        raise RetrieveUrlError("RetrieveURL carries credentials")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise RetrieveUrlError("RetrieveURL has a query or a fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RetrieveUrlError("RetrieveURL has no host")
    if _is_ip(host):
        if not policy.allow_ip_literals:
            raise RetrieveUrlError("RetrieveURL host is an IP address, not a DNS name")
    else:
        _check_dns_name(host)
    if port == 0:
        raise RetrieveUrlError("RetrieveURL port 0")
    if policy.host_allowed is not None and not policy.host_allowed(host):
        raise RetrieveUrlError("RetrieveURL host is not in the DRIM-M whitelist")
    for prefix in policy.prefixes:
        rest = parts.path.removeprefix(prefix + "/")
        if rest == parts.path:
            continue
        segments = rest.split("/")
        if len(segments) != 4 or segments[0] != "studies" or segments[2] != "series":
            break
        study, series = segments[1], segments[3]
        for what, uid in (("study", study), ("series", series)):
            if not is_valid_uid(uid):
                raise RetrieveUrlError(f"RetrieveURL {what} UID is not a valid DICOM UID")
        return RetrieveTarget(url=url, host=host, port=port or 443, prefix=prefix,
                              study_uid=study, series_uid=series)
    raise RetrieveUrlError("RetrieveURL path is not {prefix}/studies/{uid}/series/{uid} "
                           f"with a prefix in {', '.join(policy.prefixes)}")
