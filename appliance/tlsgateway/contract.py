"""What the daemon and its TLS gateway process agree on: where the sockets are, which upstreams
exist, the headers the gateway owns, and what its exit codes mean.

Both sides derive everything from the same configuration file, so they cannot disagree.
Importing this module is cheap (no aiohttp, no PKCS#11): ``appliance.dmp`` reads its header names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Set by the gateway on every request it forwards to the daemon: the TLS client certificate it
#: verified against ``hsm.trust_anchors`` (DER, base64). Removed from every incoming request first.
CLIENT_CERT_HEADER = "X-Drimbox-Client-Cert"
#: The client's address as the gateway saw it (replaces any value the client sent).
FORWARDED_FOR_HEADER = "X-Forwarded-For"
#: Headers only the gateway may set; whatever a client sends under these names is dropped.
GATEWAY_OWNED_HEADERS = (CLIENT_CERT_HEADER, FORWARDED_FOR_HEADER, "Forwarded",
                         "X-Forwarded-Proto", "X-Forwarded-Host")
#: On an answer the gateway made itself (not the upstream's): why it could not forward.
GATEWAY_ERROR_HEADER = "X-Drimbox-Gateway-Error"

#: The host name of egress URLs (the Unix socket is what is dialled; the name is only a label).
EGRESS_HOST = "tls-gateway"

UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# Exit codes of the gateway process (sysexits.h words), read by the supervisor.
EXIT_TEMPFAIL = 75   # the token is absent or unreachable: start again when it is back
EXIT_PIN = 77        # the PIN was refused: never start again with the same PIN file
EXIT_CONFIG = 78     # configuration, certificate or port problem: an operator must act

EXIT_WORDS = {EXIT_TEMPFAIL: "token unavailable", EXIT_PIN: "PIN refused",
              EXIT_CONFIG: "configuration or certificate error"}


@dataclass(frozen=True)
class Upstream:
    """A party the gateway may reach: ``name`` in egress URLs, ``origin`` it connects to."""

    name: str
    origin: str               # scheme://host:port, nothing else
    ca_file: Path | None      # anchors that verify its server certificate
    max_response_bytes: int
    timeout: float


@dataclass(frozen=True)
class Plan:
    """What one box's gateway does, and where its sockets are."""

    directory: Path           # the gateway's own runtime directory (0700)
    egress_socket: Path       # the gateway listens here; the daemon sends plain HTTP to it
    app_socket: Path          # the daemon's aiohttp app listens here when ingress is on
    exit_reason: Path         # the gateway's last words when it cannot run (no secret in them)
    ingress: bool             # serve http.bind:http.port with TLS and forward to app_socket
    upstreams: dict[str, Upstream]

    @property
    def needed(self) -> bool:
        return self.ingress or bool(self.upstreams)


#: PSC answers small JSON documents (discovery, tokens, introspection, userinfo, JWKS).
PSC_MAX_RESPONSE_BYTES = 1 << 20


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def plan(config: Any) -> Plan:
    """The gateway of box ``config`` (an ``appliance.config.Config``).

    Default deny: an upstream exists only if the configuration names it. Today that is the DMP
    (``dmp`` -> the origin of ``dmp.url``) and Pro Santé Connect (``psc`` -> the origin of
    ``psc.discovery_url``: its token, introspection, userinfo and JWKS endpoints must be there);
    whitelisted peer boxes will be added here.
    """
    upstreams: dict[str, Upstream] = {}
    if config.hsm.enabled and config.dmp.enabled:
        upstreams["dmp"] = Upstream("dmp", origin_of(config.dmp.url), config.dmp.ca_file,
                                    config.dmp.max_response_bytes, config.dmp.timeout)
    if config.hsm.enabled and config.psc.enabled:
        upstreams["psc"] = Upstream("psc", origin_of(config.psc.discovery_url),
                                    config.psc.ca_file, PSC_MAX_RESPONSE_BYTES,
                                    config.psc.timeout)
    run = Path(config.runtime_dir)
    directory = run / "gateway"
    return Plan(directory=directory, egress_socket=directory / "egress.sock",
                app_socket=run / "http.sock", exit_reason=directory / "exit-reason",
                ingress=bool(config.http.tls),
                upstreams=upstreams)


def egress_url(upstream: str, url: str) -> str:
    """Where the daemon sends a request meant for ``url`` of ``upstream`` (the path and query of
    ``url`` after the upstream's name), e.g. ``http://tls-gateway/dmp/si-dmp-server/...``."""
    parts = urlsplit(url)
    return f"http://{EGRESS_HOST}/{upstream}{parts.path}" + (f"?{parts.query}"
                                                             if parts.query else "")


# sockaddr_un.sun_path is 108 bytes with its final NUL.
MAX_SOCKET_PATH = 107


def check_socket_path(path: Path) -> None:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"Unix socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
                         "choose a shorter box.data_dir")
