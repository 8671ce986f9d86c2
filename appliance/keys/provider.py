"""OpenSSL 3 + pkcs11-provider for this process: the private OPENSSL_CONF and the URI-PEM key files.

Python's ``ssl`` cannot be given a key object, only files. With pkcs11-provider loaded, the "key
file" can be a PEM block that only *names* the token key (RFC 7512 URI); OpenSSL then asks the token
to sign during each handshake and the key never leaves it.

When is the configuration read?  OpenSSL reads ``OPENSSL_CONF`` once, at its first initialisation,
which in a Python process happens as soon as anything creates an SSL context or a hash (asyncio,
aiohttp, pytest plugins all do). Setting the variable later has no effect (measured: ``PEM lib``
error). So instead of depending on import order, :func:`activate` loads our configuration into
OpenSSL's default library context explicitly with ``OSSL_LIB_CTX_load_config`` — legal at any time,
and it takes effect for every SSL context created afterwards, including its ``ssl_conf`` section
(TLS 1.2 / RSA+SHA256 for tokens without RSA-PSS). No Python library exposes that call, hence the
few ctypes lines below. The same file also works as ``OPENSSL_CONF`` for child tools
(``openssl req``, ``openssl s_client``).

Never fork after activation: PKCS#11 modules do not survive ``fork()`` (sessions and locks are
per process). A child that tries to build a TLS context from the token gets a clear error.
"""

from __future__ import annotations

import base64
import ctypes
import glob
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asn1crypto import core

from .errors import KeysError

QUIRKS = "no-deinit no-operation-state"  # SoftHSM segfaults without them; harmless elsewhere
_PROVIDER_GLOBS = ("/usr/lib/*/ossl-modules/pkcs11.so", "/usr/lib/ossl-modules/pkcs11.so",
                   "/usr/lib64/ossl-modules/pkcs11.so", "/usr/local/lib*/ossl-modules/pkcs11.so")

_lock = threading.Lock()
_active: dict[str, Any] = {}  # what this process loaded: module, rsa_pss, conf
_forked = False
_runtime_dir: Path | None = None
_tokens_in_use: set[str] = set()  # tokens named by a key file written by this process


def _mark_forked() -> None:
    global _forked
    _forked = bool(_active)


os.register_at_fork(after_in_child=_mark_forked)


def provider_path() -> Path:
    """Where pkcs11-provider's ``pkcs11.so`` is ($DRIMBOX_PKCS11_PROVIDER overrides)."""
    env = os.environ.get("DRIMBOX_PKCS11_PROVIDER")
    cands = [env] if env else [p for g in _PROVIDER_GLOBS for p in sorted(glob.glob(g))]
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise KeysError("pkcs11-provider is not installed (Debian: apt-get install -t "
                    "bookworm-backports pkcs11-provider); TLS with a token key needs it")


def set_runtime_dir(path: str | Path) -> None:
    """The daemon's runtime dir (``Config.runtime_dir``); by default $RUNTIME_DIRECTORY (systemd)
    or a private temporary directory."""
    global _runtime_dir
    _runtime_dir = Path(path)


def runtime_dir() -> Path:
    global _runtime_dir
    if _runtime_dir is None:
        env = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        _runtime_dir = Path(env) / "keys" if env else Path(tempfile.mkdtemp(prefix="drimbox-keys-"))
    _runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(_runtime_dir, 0o700)
    return _runtime_dir


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (no window where others read)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def render_conf(module: str | Path, rsa_pss: bool = True, provider: Path | None = None) -> str:
    """The OpenSSL configuration: default + pkcs11 providers; TLS 1.2 / RSA+SHA256 without PSS.

    No PIN here: each key URI carries ``pin-source=file:...``, so several tokens (with their own
    PINs) can share one module in one process.
    """
    prov = provider or provider_path()
    lines = [
        "# Written by drimbox at start; do not edit (appliance/keys/provider.py).",
        "openssl_conf = openssl_init",
        "[openssl_init]",
        "providers = provider_sect",
    ]
    if not rsa_pss:
        lines.append("ssl_conf = ssl_sect")
    lines += [
        "[provider_sect]",
        "default = default_sect",
        "pkcs11 = pkcs11_sect",
        "[default_sect]",
        "activate = 1",
        "[pkcs11_sect]",
        f"module = {prov}",
        f"pkcs11-module-path = {module}",
        f"pkcs11-module-quirks = {QUIRKS}",
        "activate = 1",
    ]
    if not rsa_pss:
        # Tokens without RSA-PSS (CPS3 cards, many HSMs): TLS 1.3 requires PSS, so stay on TLS 1.2
        # and offer PKCS#1 v1.5 signatures only.
        lines += ["[ssl_sect]", "system_default = tls_token_sect", "[tls_token_sect]",
                  "MaxProtocol = TLSv1.2", "SignatureAlgorithms = RSA+SHA256:RSA+SHA384"]
    return "\n".join(lines) + "\n"


def key_uri(token_label: str, key_label: str, pin_file: str | Path | None) -> str:
    """RFC 7512 URI of a private key, with the PIN file as ``pin-source``."""
    uri = f"pkcs11:token={quote(token_label, safe='')};object={quote(key_label, safe='')};" \
          "type=private"
    if pin_file is not None:
        uri += "?pin-source=" + quote(f"file:{Path(pin_file).resolve()}", safe=":/")
    return uri


class _UriPem(core.Sequence):
    # pkcs11-provider's "PKCS#11 PROVIDER URI" PEM: SEQUENCE { VisibleString, UTF8String }
    _fields = [("desc", core.VisibleString), ("uri", core.UTF8String)]


def uri_pem(uri: str) -> str:
    der = _UriPem({"desc": "PKCS#11 Provider URI v1.0", "uri": uri}).dump()
    return ("-----BEGIN PKCS#11 PROVIDER URI-----\n" + base64.encodebytes(der).decode()
            + "-----END PKCS#11 PROVIDER URI-----\n")


def parse_uri_pem(text: str) -> str:
    """The URI inside a URI-PEM key file. Raises ValueError for anything else."""
    begin, end = "-----BEGIN PKCS#11 PROVIDER URI-----", "-----END PKCS#11 PROVIDER URI-----"
    head, sep, rest = text.partition(begin)
    body, sep2, _ = rest.partition(end)
    if not sep or not sep2 or head.strip():
        raise ValueError("not a PKCS#11 PROVIDER URI PEM block")
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
        seq = _UriPem.load(der, strict=True)
        desc, uri = seq["desc"].native, seq["uri"].native
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"malformed PKCS#11 PROVIDER URI PEM: {e}") from None
    if desc != "PKCS#11 Provider URI v1.0" or not isinstance(uri, str) or \
            not uri.startswith("pkcs11:"):
        raise ValueError("malformed PKCS#11 PROVIDER URI PEM: unexpected content")
    return uri


def write_conf(module: str | Path, rsa_pss: bool = True, directory: Path | None = None) -> Path:
    d = directory or runtime_dir()
    p = d / ("openssl-pkcs11.cnf" if rsa_pss else "openssl-pkcs11-tls12.cnf")
    _write_private(p, render_conf(module, rsa_pss))
    return p


def write_key_file(token_label: str, key_label: str, pin_file: str | Path | None,
                   directory: Path | None = None) -> Path:
    """The URI-PEM "key file" for ``SSLContext.load_cert_chain`` (mode 0600)."""
    d = (directory or runtime_dir()) / "keys"
    d.mkdir(mode=0o700, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_"
                   for ch in f"{token_label}-{key_label}")
    tag = hashlib.sha256(f"{token_label}\0{key_label}".encode()).hexdigest()[:8]  # no collisions
    p = d / f"{safe}-{tag}.key.pem"
    _write_private(p, uri_pem(key_uri(token_label, key_label, pin_file)))
    _tokens_in_use.add(token_label)
    return p


def _libcrypto() -> ctypes.CDLL:
    """The libcrypto that Python's ``_ssl`` is linked to (the one whose context matters)."""
    import _ssl  # noqa: F401  (makes sure it is mapped)

    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "/libcrypto.so" in path:
                return ctypes.CDLL(path)
    return ctypes.CDLL("libcrypto.so.3")


def activate(module: str | Path, rsa_pss: bool = True) -> Path:
    """Load pkcs11-provider for ``module`` into this process's OpenSSL (once). Returns the conf.

    Call it at daemon start before building TLS contexts; :mod:`appliance.keys.tls` calls it too.
    """
    if _forked:
        raise KeysError("this process was forked after pkcs11-provider was loaded; PKCS#11 does "
                        "not survive fork(): start a fresh process instead")
    module = str(module)
    with _lock:
        if _active:
            if (_active["module"], _active["rsa_pss"]) != (module, rsa_pss):
                raise KeysError(
                    f"pkcs11-provider is already loaded for {_active['module']} "
                    f"(rsa_pss={_active['rsa_pss']}); one token module and one TLS policy per "
                    "process")
            return Path(_active["conf"])
        conf = write_conf(module, rsa_pss)
        # Initialise the module ourselves first, with OS locking (see module.py): the provider
        # accepts CKR_CRYPTOKI_ALREADY_INITIALIZED, python-pkcs11 would not.
        from . import module as p11module

        p11module.load(module)
        lc = _libcrypto()
        lc.OSSL_LIB_CTX_load_config.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lc.OSSL_LIB_CTX_load_config.restype = ctypes.c_int
        lc.OSSL_PROVIDER_available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lc.OSSL_PROVIDER_available.restype = ctypes.c_int
        if lc.OSSL_LIB_CTX_load_config(None, str(conf).encode()) != 1 or \
                lc.OSSL_PROVIDER_available(None, b"pkcs11") != 1:
            lc.ERR_clear_error()
            raise KeysError(f"OpenSSL could not load pkcs11-provider with {conf} "
                            f"(module {module}); check the module path and the provider package")
        _active.update(module=module, rsa_pss=rsa_pss, conf=str(conf))
        return conf


def active_module() -> str | None:
    """The PKCS#11 module pkcs11-provider was loaded for in this process, if any."""
    return _active.get("module")


def shares_login(module: str, token_label: str) -> bool:
    """True when pkcs11-provider may hold sessions on this token in this process (it relies on
    the process's PKCS#11 login, which a C_Logout would take away)."""
    return _active.get("module") == module and token_label in _tokens_in_use


def is_private(path: Path) -> bool:
    """True when only the owner can read or write ``path`` (mode 0600 or stricter)."""
    return not (stat.S_IMODE(path.stat().st_mode) & 0o077)
