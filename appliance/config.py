"""Typed, validated settings from one TOML file (ARCHITECTURE.md §7).

The keys of §7 are a stable contract: every one of them is required and none is ever renamed.
Keys added by the box itself have defaults. An unknown key, a missing key or a bad value raises
:class:`ConfigError` whose message names the key (``section.key``) and says what is expected.
Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the offending key."""


REQUIRED: Any = dataclasses.MISSING


def _check(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "a TCP port from 0 to 65535 (0 picks a free port)"


def _ae_title(v: str) -> str | None:
    if not (1 <= len(v) <= 16) or not re.fullmatch(r"[\x20-\x7e]+", v) or "\\" in v or v.strip() != v:
        return "a DICOM AE title: 1 to 16 printable ASCII characters, no backslash, no edge spaces"
    return None


def _host(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+", v):
        return None
    return "an IP address or a host name"


def _https_or_http_url(v: str) -> str | None:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "an absolute http(s) URL such as https://db1.example.org:8443"
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _positive(v: float) -> str | None:
    return None if v > 0 else "a number greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "a number of 0 or more"


def _pdu(v: int) -> str | None:
    return None if v == 0 or 4096 <= v <= 2**32 - 1 else "0 (unlimited) or a PDU size from 4096 bytes"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "a non-empty string"


@dataclass(frozen=True)
class BoxConfig:
    name: str = field(default=REQUIRED, metadata=_check(_non_empty))
    data_dir: Path = REQUIRED
    public_url: str = field(default=REQUIRED, metadata=_check(_https_or_http_url))
    # Added keys.
    log_level: str = field(default="info", metadata=_check(_one_of("debug", "info", "warning", "error")))
    log_format: str = field(default="auto", metadata=_check(_one_of("auto", "json", "journald")))
    shutdown_timeout: float = field(default=8.0, metadata=_check(_positive))


@dataclass(frozen=True)
class Modality:
    """A DICOM peer allowed to associate with the box (besides the PACS)."""

    ae_title: str = field(default=REQUIRED, metadata=_check(_ae_title))
    host: str = field(default="", metadata=_check(lambda v: None if not v else _host(v)))
    port: int = field(default=104, metadata=_check(_port))


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str = field(default=REQUIRED, metadata=_check(_ae_title))
    bind: str = field(default=REQUIRED, metadata=_check(_host))
    port: int = field(default=REQUIRED, metadata=_check(_port))
    # Added keys.
    max_pdu: int = field(default=131072, metadata=_check(_pdu))
    max_associations: int = field(default=16, metadata=_check(_positive))
    network_timeout: float = field(default=30.0, metadata=_check(_positive))
    modalities: tuple[Modality, ...] = ()
    # Root for the UIDs the box creates (KOS): the organisation's registered root, or "" for 2.25.
    uid_root: str = field(default="", metadata=_check(
        lambda v: None if not v or (len(v) <= 40 and re.fullmatch(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*", v))
        else "a UID root of at most 40 characters (digits and dots), or empty for 2.25"))


@dataclass(frozen=True)
class PacsConfig:
    ae_title: str = field(default=REQUIRED, metadata=_check(_ae_title))
    host: str = field(default=REQUIRED, metadata=_check(_host))
    port: int = field(default=REQUIRED, metadata=_check(_port))
    retrieve: str = field(default=REQUIRED, metadata=_check(_one_of("c-move", "c-get")))
    # Added keys.
    timeout: float = field(default=30.0, metadata=_check(_positive))
    retrieve_timeout: float = field(default=600.0, metadata=_check(_positive))
    retries: int = field(default=2, metadata=_check(_non_negative))
    retry_backoff: float = field(default=1.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class Hl7Config:
    bind: str = field(default=REQUIRED, metadata=_check(_host))
    port: int = field(default=REQUIRED, metadata=_check(_port))
    # Added keys.
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata=_check(_positive))
    idle_timeout: float = field(default=300.0, metadata=_check(_positive))


@dataclass(frozen=True)
class HttpConfig:
    bind: str = field(default=REQUIRED, metadata=_check(_host))
    port: int = field(default=REQUIRED, metadata=_check(_port))
    tls: bool = REQUIRED
    # Added keys: the server certificate; its key is a token key (hsm) named by label.
    cert_file: Path | None = None
    server_key_label: str = "server"
    # Limits of the HTTP side (the TLS gateway applies them to HTTPS too). aiohttp arms the
    # keep-alive timer when a connection opens, so it also bounds the wait for a complete
    # request head (slow or silent clients are cut after it).
    keepalive_timeout: float = field(default=15.0, metadata=_check(_positive))
    max_body_bytes: int = field(default=64 * 1024**2, metadata=_check(_positive))


@dataclass(frozen=True)
class RolesConfig:
    source: bool = REQUIRED
    consumer: bool = REQUIRED


@dataclass(frozen=True)
class HsmConfig:
    module: Path = REQUIRED
    token_label: str = field(default=REQUIRED, metadata=_check(_non_empty))
    pin_file: Path = REQUIRED
    auth_key_label: str = field(default=REQUIRED, metadata=_check(_non_empty))
    sign_key_label: str = field(default=REQUIRED, metadata=_check(_non_empty))
    # Added keys.
    enabled: bool = True
    rsa_pss: bool = True  # False for tokens without RSA-PSS (CPS3, many HSMs): TLS 1.2, RSA+SHA256
    trust_anchors: tuple[Path, ...] = ()
    max_pin_attempts: int = field(default=1, metadata=_check(_positive))


@dataclass(frozen=True)
class DmpConfig:
    url: str = field(default=REQUIRED, metadata=_check(_https_or_http_url))
    ca_file: Path = REQUIRED
    # Added keys.
    enabled: bool = True
    timeout: float = field(default=30.0, metadata=_check(_positive))
    # Added by the DMP connector: this software's identifiers at the DMP (VIHF LPS_* attributes),
    # the XDS sourceId OID, signature algorithms (the ANS samples use SHA-1) and an answer size cap.
    lps_id: str = field(default="OPEN-DRIMBOX", metadata=_check(_non_empty))
    lps_name: str = field(default="Open DRIMbox", metadata=_check(_non_empty))
    lps_version: str = field(default="0.1.0", metadata=_check(_non_empty))
    lps_homologation: str = field(default="HOMOLOGATION-TEST", metadata=_check(_non_empty))
    source_id: str = field(default="1.2.250.1.999.1.1.8121", metadata=_check(_non_empty))
    signature_algorithm: str = field(default="rsa-sha256",
                                     metadata=_check(_one_of("rsa-sha256", "rsa-sha1")))
    digest_algorithm: str = field(default="sha256", metadata=_check(_one_of("sha256", "sha1")))
    max_response_bytes: int = field(default=64 * 1024 * 1024, metadata=_check(_positive))


@dataclass(frozen=True)
class SourceConfig:
    """Added section: the source role's publication rules."""

    image_wait: float = field(default=24 * 3600.0, metadata=_check(_positive))  # seconds
    image_retry_max: float = field(default=900.0, metadata=_check(_positive))
    check_accession: bool = False  # also compare OBR-18 with the CDA accession (ANS samples differ)


@dataclass(frozen=True)
class StoreConfig:
    """Added section: the instance store on disk."""

    max_bytes: int = field(default=50 * 1024**3, metadata=_check(_positive))
    min_free_bytes: int = field(default=512 * 1024**2, metadata=_check(_non_negative))
    # fsync each instance (file and directory) before the C-STORE success: an acknowledged
    # instance survives a power cut. False trades that for speed (Orthanc's default behaviour).
    fsync: bool = True


def _network(v: str) -> str | None:
    try:
        ipaddress.ip_network(v, strict=False)
        return None
    except ValueError:
        return "an IP address or network such as 10.1.2.3 or 10.1.2.0/24"


@dataclass(frozen=True)
class DicomwebConfig:
    """Added section: who may read the box's DICOMweb besides peers and viewer sessions."""

    # Site tools (a local viewer, a PACS) on these addresses or networks read without a token.
    # Default empty: nobody. Every start logs a warning while it is not empty.
    open_to: tuple[str, ...] = field(default=(), metadata=_check(
        lambda v: next((f"{x!r}: {p}" for x in v if (p := _network(x))), None)))
    max_concurrent_per_peer: int = field(default=4, metadata=_check(_positive))
    request_timeout: float = field(default=600.0, metadata=_check(_positive))


@dataclass(frozen=True)
class TrustConfig:
    """Added section: the national whitelist (ListeBlancheDRIM-M) of DRIM-M peer boxes."""

    # Where the signed list is fetched: http(s):// or file://; "" = no list, so no peer is trusted.
    whitelist_url: str = field(default="", metadata=_check(
        lambda v: None if not v or urlsplit(v).scheme in ("http", "https", "file")
        else "an http(s):// or file:// URL, or empty"))
    # Anchors that verify the list's signer (ANS / IGC-Santé roots); default hsm.trust_anchors.
    whitelist_anchors: tuple[Path, ...] = ()
    whitelist_signer_cn: str = field(default="Liste Blanche DRIM-M", metadata=_check(_non_empty))
    whitelist_signer_ou: str = field(default="318751275100020", metadata=_check(_non_empty))
    whitelist_refresh: float = field(default=3600.0, metadata=_check(_positive))   # seconds
    whitelist_max_age: float = field(default=7 * 86400.0, metadata=_check(_positive))
    # "require": the signer's CRL (plain HTTP, as the national rules allow) must be fetched and
    # must not list it; "off": not checked (development only).
    revocation: str = field(default="require", metadata=_check(_one_of("require", "off")))
    fetch_timeout: float = field(default=20.0, metadata=_check(_positive))
    # A peer box's client certificate: "require" its issuer's CRL (plain HTTP, cached until
    # nextUpdate) to say it is not revoked; "off": not checked (development only).
    peer_revocation: str = field(default="require", metadata=_check(_one_of("require", "off")))


@dataclass(frozen=True)
class PscConfig:
    """Added section: Pro Santé Connect (OIDC), reached through the TLS gateway with mTLS."""

    enabled: bool = False
    discovery_url: str = field(default="", metadata=_check(
        lambda v: None if not v else _https_or_http_url(v)))
    client_id: str = ""
    ca_file: Path | None = None          # anchors of PSC's server certificate
    # The audience a peer's access token must carry to read from this box (default client_id).
    audience: str = ""
    timeout: float = field(default=10.0, metadata=_check(_positive))
    # Introspection answers are cached this long at most, never past the token's expiry.
    introspection_cache: float = field(default=30.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class Config:
    box: BoxConfig
    dicom: DicomConfig
    pacs: PacsConfig
    hl7: Hl7Config
    http: HttpConfig
    roles: RolesConfig
    hsm: HsmConfig
    dmp: DmpConfig
    store: StoreConfig = StoreConfig()
    source: SourceConfig = SourceConfig()
    dicomweb: DicomwebConfig = DicomwebConfig()
    trust: TrustConfig = TrustConfig()
    psc: PscConfig = PscConfig()
    path: Path | None = None

    @property
    def state_db(self) -> Path:
        return self.box.data_dir / "state.db"

    @property
    def instances_dir(self) -> Path:
        return self.box.data_dir / "instances"

    @property
    def runtime_dir(self) -> Path:
        return self.box.data_dir / "run"


_SECTIONS: dict[str, type] = {
    "box": BoxConfig,
    "dicom": DicomConfig,
    "pacs": PacsConfig,
    "hl7": Hl7Config,
    "http": HttpConfig,
    "roles": RolesConfig,
    "hsm": HsmConfig,
    "dmp": DmpConfig,
    "store": StoreConfig,
    "source": SourceConfig,
    "dicomweb": DicomwebConfig,
    "trust": TrustConfig,
    "psc": PscConfig,
}
_OPTIONAL_SECTIONS = {"store", "source", "dicomweb", "trust", "psc"}

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               Path: "a file path (string)"}


def _coerce(key: str, hint: Any, value: Any, base: Path) -> Any:
    origin = get_origin(hint)
    if origin is tuple:
        (item,) = [a for a in get_args(hint) if a is not Ellipsis]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[{i}]", item, v, base) for i, v in enumerate(value))
    if origin is not None and type(None) in get_args(hint):  # Optional[X]
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return _coerce(key, inner, value, base)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return _build(key, hint, value, base)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected {_TYPE_WORDS[Path]}, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()
    raise TypeError(f"unsupported config type for {key}: {hint!r}")  # programming error


def _build(prefix: str, cls: type, table: dict[str, Any], base: Path) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    for k in table:
        if k not in fields:
            raise ConfigError(f"{prefix}.{k}: unknown key (expected one of: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in table:
            if f.default is REQUIRED and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                word = _TYPE_WORDS.get(hints[name], "a value")
                raise ConfigError(f"{key}: missing key (expected {word})")
            continue
        value = _coerce(key, hints[name], table[name], base)
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key}: bad value {table[name]!r} (expected {problem})")
        values[name] = value
    return cls(**values)


def parse(text: str, base: Path = Path("."), path: Path | None = None) -> Config:
    """Parse and validate configuration text. Raises :class:`ConfigError`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
    for section in doc:
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section (expected one of: {', '.join(_SECTIONS)})")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name not in doc:
            if name in _OPTIONAL_SECTIONS:
                continue
            raise ConfigError(f"{name}: missing section [{name}]")
        if not isinstance(doc[name], dict):
            raise ConfigError(f"{name}: expected a table [{name}]")
        sections[name] = _build(name, cls, doc[name], base)
    cfg = Config(**sections, path=path)
    _check_rules(cfg)
    return cfg


def _check_rules(cfg: Config) -> None:
    """Rules across keys; ``config check`` and ``run`` both go through here."""
    if cfg.psc.enabled:
        for key in ("discovery_url", "client_id"):
            if not getattr(cfg.psc, key):
                raise ConfigError(f"psc.{key}: missing key (needed when psc.enabled is true)")
        if not cfg.hsm.enabled:
            raise ConfigError("psc.enabled: needs hsm.enabled (the box authenticates to Pro "
                              "Santé Connect by mTLS with its token key)")


def load(path: str | Path) -> Config:
    """Load and validate the configuration file at ``path``. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read configuration file: {e}") from None
    return parse(text, base=p.resolve().parent, path=p.resolve())


def example(data_dir: str = "/var/lib/drimbox") -> str:
    """A complete configuration with every contract key, for docs, tests and the demo."""
    return f"""\
[box]
name = "drimbox-1"
data_dir = "{data_dir}"
public_url = "https://db1.example.org:8443"

[dicom]
ae_title = "DRIMBOX"
bind = "127.0.0.1"
port = 11112

[pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
retrieve = "c-move"

[hl7]
bind = "127.0.0.1"
port = 2575

[http]
bind = "127.0.0.1"
port = 8443
tls = false

[roles]
source = true
consumer = true

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "drimbox"
pin_file = "/run/credentials/drimbox.service/hsm-pin"
auth_key_label = "auth"
sign_key_label = "sign"

[dmp]
url = "https://dmp.example.org/si-dmp-server/v2/services"
ca_file = "/etc/drimbox/dmp-ca.pem"
"""
