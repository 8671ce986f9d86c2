"""``ssl.SSLContext`` objects whose private key is a token key (client and server side).

The contexts are plain stdlib contexts: pass them to aiohttp (``ssl=`` of a connector or of
``web.TCPSite``) or to ``asyncio``. The certificate is checked before use (validity, KeyUsage/EKU,
chain to ``hsm.trust_anchors`` when configured) so an expired or wrong-usage certificate is refused
at start, not at the first handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from . import certs, provider
from .errors import CertificateRefused, KeysError
from .token import Token


def _check_cert(hsm_cfg: Any, cert_file: str | Path, use: str) -> None:
    try:
        chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    except (OSError, ValueError) as e:
        raise CertificateRefused(f"cannot read certificate {cert_file}: {e}") from None
    trust = certs.load_pem_certificates(getattr(hsm_cfg, "trust_anchors", ()) or ())
    certs.check_for_use(chain[0], use, trust + chain[1:])


def _diagnose(hsm_cfg: Any, key_label: str, err: Exception) -> KeysError:
    """Turn OpenSSL's terse error ("PEM lib", "key values mismatch") into what is wrong."""
    try:
        with Token.from_config(hsm_cfg) as tok:
            tok.public_key(key_label)
    except KeysError as e:
        return type(e)(f"cannot use token key {key_label!r} for TLS: {e}")
    if "mismatch" in str(err):
        return CertificateRefused(f"the certificate does not match token key {key_label!r}")
    return KeysError(f"OpenSSL refused token key {key_label!r}: {err}")


# One logged-in python-pkcs11 session per token used for TLS, open for the life of the process.
# SoftHSM invalidates every object handle of a token when its last session closes, and
# pkcs11-provider 1.0 keeps key handles across its own sessions: its next C_SignInit then fails
# with CKR_OBJECT_HANDLE_INVALID and the handshake is reset (measured, intermittent). A session
# that never closes also keeps the process's login, which the provider relies on.
_keepers: dict[tuple[str, str], Token] = {}


def _keep_open(hsm_cfg: Any) -> None:
    key = (str(hsm_cfg.module), hsm_cfg.token_label)
    if key not in _keepers:
        tok = Token.from_config(hsm_cfg)
        tok.open()  # raises TokenAbsent / PinError / ... with a clear message
        _keepers[key] = tok


def _load(ctx: ssl.SSLContext, hsm_cfg: Any, key_label: str, cert_file: str | Path) -> None:
    _keep_open(hsm_cfg)
    key_file = provider.write_key_file(hsm_cfg.token_label, key_label, hsm_cfg.pin_file)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as e:
        raise _diagnose(hsm_cfg, key_label, e) from None


def _policy(ctx: ssl.SSLContext, hsm_cfg: Any) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not getattr(hsm_cfg, "rsa_pss", True):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # signature algorithms: see provider.py


def client_context(hsm_cfg: Any, key_label: str, cert_file: str | Path,
                   cafile: str | Path | None, *, check_certificate: bool = True
                   ) -> ssl.SSLContext:
    """A TLS client context authenticating with token key ``key_label`` and ``cert_file``
    (leaf first, then intermediates), verifying servers against ``cafile``.
    ``check_certificate=False`` is for test peers that present a bad certificate on purpose."""
    provider.activate(hsm_cfg.module, getattr(hsm_cfg, "rsa_pss", True))
    if check_certificate:
        _check_cert(hsm_cfg, cert_file, "tls-client")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(cafile) if cafile else None)
    _policy(ctx, hsm_cfg)
    _load(ctx, hsm_cfg, key_label, cert_file)
    return ctx


def server_context(hsm_cfg: Any, key_label: str, cert_file: str | Path,
                   client_ca: str | Path | Sequence[str | Path] | None = None, *,
                   client_cert: str = "required") -> ssl.SSLContext:
    """A TLS server context with token key ``key_label``.

    With ``client_ca`` (one PEM bundle or several), clients present a certificate issued under it:
    ``client_cert="required"`` (peer mTLS) or ``"optional"`` (one HTTPS server for the LAN UI and
    for peers; the handler then checks ``peercert`` per route). Without ``client_ca``, no client
    certificate is asked.
    """
    if client_cert not in ("required", "optional"):
        raise ValueError("client_cert is 'required' or 'optional'")
    provider.activate(hsm_cfg.module, getattr(hsm_cfg, "rsa_pss", True))
    _check_cert(hsm_cfg, cert_file, "tls-server")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _policy(ctx, hsm_cfg)
    cas = [client_ca] if isinstance(client_ca, (str, Path)) else list(client_ca or ())
    if cas:
        for ca in cas:
            ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    _load(ctx, hsm_cfg, key_label, cert_file)
    return ctx


def box_server_context(config: Any, runtime_dir: Path | None = None) -> ssl.SSLContext:
    """The box's HTTPS context from its whole ``Config``: key ``http.server_key_label`` on the
    token, certificate ``http.cert_file``, client certificates optional and checked against
    ``hsm.trust_anchors`` (peers present theirs; the LAN UI needs none). The provider's files go
    to ``runtime_dir`` (default ``<runtime_dir>/keys``)."""
    if config.http.cert_file is None:
        raise KeysError("http.tls = true needs http.cert_file (the server certificate of the "
                        "token key http.server_key_label)")
    provider.set_runtime_dir(runtime_dir or config.runtime_dir / "keys")
    ctx = server_context(config.hsm, config.http.server_key_label, config.http.cert_file,
                         client_ca=config.hsm.trust_anchors or None, client_cert="optional")
    # The handshake checks a client certificate's chain and signatures, not its dates: the
    # DICOMweb guard checks those itself, so an expired peer gets a 403 with its reason and an
    # audit row instead of an anonymous TLS alert. Nothing else reads the client certificate.
    ctx.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
    return ctx


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (the ssl module has no name for it).
_X509_V_FLAG_NO_CHECK_TIME = 0x200000
