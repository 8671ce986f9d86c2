"""One PKCS#11 token, one shared logged-in session, signatures with keys that never leave it.

python-pkcs11 does the PKCS#11 work. This module adds what the box needs around it: the PIN read
from a file (never from the config), bounded login attempts so a wrong PIN can never lock a card by
retry loops, one session shared by all threads under a lock (many PKCS#11 libraries dislike parallel
logins), and recovery when the token goes away and comes back, without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from appliance.component import Health

from . import module as p11module
from . import provider, softhsm
from .errors import KeyNotFound, KeysError, ModuleError, PinError, PinFileError, TokenAbsent

log = logging.getLogger(__name__)

T = TypeVar("T")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# Logged-in sessions kept open because pkcs11-provider shares their login (see _drop_session).
_KEPT_LOGGED_IN: dict[tuple[str, str], Any] = {}

#: algorithm name -> (mechanism, mechanism parameter). The token hashes the data.
ALGORITHMS: dict[str, tuple[Mechanism, Any]] = {
    "rsa-sha256": (Mechanism.SHA256_RSA_PKCS, None),
    "rsa-sha1": (Mechanism.SHA1_RSA_PKCS, None),
    # PSS with SHA-256, MGF1-SHA-256 and a salt as long as the hash (RFC 8017 / TLS 1.3 usage).
    "rsa-pss-sha256": (Mechanism.SHA256_RSA_PKCS_PSS, (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)),
    "ecdsa-sha256": (Mechanism.ECDSA_SHA256, None),
}

# Errors meaning "the session or the token is gone": reconnect once, then report the token absent.
_GONE: tuple[type[Exception], ...] = (
    p11e.DeviceRemoved, p11e.DeviceError, p11e.TokenNotPresent, p11e.TokenNotRecognised,
    p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid,
    p11e.SlotIDInvalid, p11e.UserNotLoggedIn, p11e.GeneralError, p11e.NoSuchToken,
)


def read_pin(pin_file: Path) -> str:
    """The PIN from its file (a systemd credential in production). Refuses a file that other
    users can read."""
    try:
        st = pin_file.stat()
        raw = pin_file.read_bytes()
    except FileNotFoundError:
        raise PinFileError(f"PIN file {pin_file} not found (hsm.pin_file)") from None
    except OSError as e:
        raise PinFileError(f"PIN file {pin_file} cannot be read: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise PinFileError(f"PIN file {pin_file} is accessible to other users "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 0600 or 0400 it")
    try:
        pin = raw.decode("utf-8", "strict").rstrip("\r\n")
    except UnicodeDecodeError:
        raise PinFileError(f"PIN file {pin_file} is not UTF-8 text") from None
    if not pin:
        raise PinFileError(f"PIN file {pin_file} is empty")
    return pin


def file_identity(p: Path) -> tuple[int, int, int]:
    """Tells a changed file from the same one (a new PIN file is a new budget of attempts)."""
    try:
        st = p.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return (0, 0, 0)


@dataclass
class ObjectInfo:
    """One object on the token, as ``drimbox hsm status`` shows it (no secret in it)."""

    kind: str  # "private key", "public key", "certificate"
    label: str
    key_type: str = ""
    bits: int = 0
    sensitive: bool | None = None
    extractable: bool | None = None
    never_extractable: bool | None = None
    subject: str = ""
    not_after: str = ""


@dataclass
class _State:
    present: bool = False
    status: str = "not opened"
    error: str = ""
    since: float = field(default_factory=time.monotonic)


class Token:
    """A token found by label in a PKCS#11 module, logged in with the PIN from ``pin_file``.

    Thread-safe: every PKCS#11 call goes through one lock and one session. Each public method
    reconnects once if the session or token vanished, so a card pulled out and put back works again
    on the next call; while it is out, calls raise :class:`TokenAbsent`.
    """

    def __init__(self, module: str | Path, token_label: str, pin_file: str | Path,
                 max_pin_attempts: int = 1, cert_dir: str | Path | None = None) -> None:
        self.module = str(module)
        self.token_label = token_label
        self.pin_file = Path(pin_file)
        self.max_pin_attempts = max(1, max_pin_attempts)
        self.cert_dir = Path(cert_dir) if cert_dir else None
        self._lock = threading.RLock()
        self._lib: Any = None
        self._session: Any = None
        self._keys: dict[tuple[str, ObjectClass], Any] = {}
        self._failed_logins = 0
        self._pin_identity: tuple[int, int, int] | None = None
        self._state = _State()
        self._last_reinit = -1e9
        # How many times the token became usable (the first open included). Whoever keeps
        # other PKCS#11 state on it, such as the TLS gateway process, starts afresh on a change.
        self.arrivals = 0

    REINIT_INTERVAL = 2.0  # seconds

    @classmethod
    def from_config(cls, hsm_cfg: Any, cert_dir: str | Path | None = None) -> Token:
        """From ``Config.hsm`` (module, token_label, pin_file, max_pin_attempts)."""
        return cls(hsm_cfg.module, hsm_cfg.token_label, hsm_cfg.pin_file,
                   max_pin_attempts=getattr(hsm_cfg, "max_pin_attempts", 1), cert_dir=cert_dir)

    # -- session lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Load the module, find the token, log in. Raises a :class:`KeysError` subclass."""
        with self._lock:
            if self._session is None:
                self._connect()

    def close(self) -> None:
        with self._lock:
            self._drop_session()
            self._set_state(False, "closed")

    def __enter__(self) -> Token:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_lib(self) -> Any:
        if self._lib is None:
            if not Path(self.module).is_file():
                raise ModuleError(f"PKCS#11 module {self.module} not found (hsm.module)")
            self._lib = p11module.load(self.module)
        return self._lib

    def _find_token(self, lib: Any) -> Any:
        try:
            return lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            broken = False
        except p11e.MultipleTokensReturned:
            raise KeysError(f"several tokens are labelled {self.token_label!r}") from None
        except p11e.PKCS11Error:
            broken = True
        # Card modules rescan their readers on C_GetSlotList; SoftHSM does not, and a module
        # that failed (GeneralError after its token store moved) needs a fresh C_Initialize.
        # Re-initialise then, at most every REINIT_INTERVAL (on a card module it re-probes every
        # card), and never while pkcs11-provider shares the module in this process: C_Finalize
        # would pull its sessions away (measured: its next handshake fails).
        now = time.monotonic()
        if not (broken or softhsm.is_softhsm(self.module)) or \
                provider.active_module() == self.module or \
                now - self._last_reinit < self.REINIT_INTERVAL:
            raise TokenAbsent(f"token {self.token_label!r} not present in {self.module}")
        self._last_reinit = now
        try:
            p11module.reinitialize(self.module)
            return lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            raise TokenAbsent(f"token {self.token_label!r} not present in {self.module}") from None
        except p11e.PKCS11Error as e:
            raise TokenAbsent(f"token {self.token_label!r} not reachable: "
                              f"{type(e).__name__}") from None

    def _connect(self) -> None:
        try:
            lib = self._load_lib()
            tok = self._find_token(lib)
            self._session = self._login(tok)
        except KeysError as e:
            status = "token absent" if isinstance(e, TokenAbsent) else (
                "pin refused" if isinstance(e, (PinError, PinFileError)) else "error")
            self._set_state(False, status, str(e))
            raise
        self._keys.clear()
        self._set_state(True, "ok")
        log.info("token opened", extra={"token": self.token_label})

    def _login(self, tok: Any) -> Any:
        ident = file_identity(self.pin_file)
        if ident != self._pin_identity:  # a new PIN file: a new budget of attempts
            self._pin_identity, self._failed_logins = ident, 0
        if self._failed_logins >= self.max_pin_attempts:
            raise PinError(f"the PIN was refused {self._failed_logins} time(s); not trying again "
                           f"so as not to lock the token. Fix {self.pin_file}, then retry")
        flags = TokenFlag(tok.flags)
        if flags & TokenFlag.USER_PIN_LOCKED:
            raise PinError(f"the user PIN of token {self.token_label!r} is locked; unblock it with "
                           "the SO PIN (or the card's PUK)")
        if flags & TokenFlag.USER_PIN_FINAL_TRY:
            raise PinError(f"token {self.token_label!r} has one PIN attempt left; the box will not "
                           "spend it automatically. Log in by hand once with the right PIN")
        pin = read_pin(self.pin_file)
        try:
            return tok.open(user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            self._failed_logins += 1
            raise PinError(f"PIN refused by token {self.token_label!r} (attempt "
                           f"{self._failed_logins} of {self.max_pin_attempts} allowed)") from None
        except p11e.PinLocked:
            raise PinError(f"the user PIN of token {self.token_label!r} is locked") from None
        except p11e.PinExpired:
            raise PinError(f"the PIN of token {self.token_label!r} has expired; change it"
                           ) from None
        except p11e.UserAlreadyLoggedIn:
            # Another session of this process (another Token on the same card) already logged in:
            # the login state is per application, so this session is usable.
            return tok.open()
        except _GONE as e:
            raise TokenAbsent(f"token {self.token_label!r} went away during login: "
                              f"{type(e).__name__}") from None
        finally:
            del pin

    def _drop_session(self) -> None:
        self._keys.clear()
        s, self._session = self._session, None
        if s is None:
            return
        if s.user_type == pkcs11.UserType.USER and provider.shares_login(self.module,
                                                                         self.token_label):
            # python-pkcs11 logs out on close, and PKCS#11 login belongs to the process: the
            # sessions pkcs11-provider holds on this token would lose it and its next key load
            # fails ("PEM lib", measured). Keep this logged-in session open instead.
            _KEPT_LOGGED_IN[(self.module, self.token_label)] = s
            return
        try:
            s.close()
        except p11e.PKCS11Error:
            pass  # already gone with the token

    def _set_state(self, present: bool, status: str, error: str = "") -> None:
        if present and not self._state.present:
            self.arrivals += 1
        if (present, status) != (self._state.present, self._state.status):
            self._state = _State(present, status, error)
        else:
            self._state.error = error

    def _run(self, op: Callable[[Any], T]) -> T:
        """Run ``op(session)`` under the lock, reconnecting once if the token went away."""
        with self._lock:
            for attempt in (1, 2):
                if self._session is None:
                    self._connect()
                try:
                    return op(self._session)
                except _GONE as e:
                    log.warning("token session lost, reconnecting",
                                extra={"token": self.token_label, "error": type(e).__name__})
                    self._drop_session()
                    if attempt == 2:
                        self._set_state(False, "token absent", type(e).__name__)
                        raise TokenAbsent(f"token {self.token_label!r} is not available "
                                          f"({type(e).__name__})") from None
            raise AssertionError("unreachable")

    def _run_rw(self, op: Callable[[Any], T]) -> T:
        """Like :meth:`_run` in a short-lived read-write session (key generation, certificate
        import); the shared session stays read-only (least privilege for the daemon)."""

        def in_rw(session: Any) -> T:
            rw = session.token.open(rw=True)  # the application is already logged in
            try:
                return op(rw)
            finally:
                rw.close()

        return self._run(in_rw)

    # -- keys and signatures -------------------------------------------------------------------

    def _key(self, session: Any, label: str, cls: ObjectClass) -> Any:
        k = self._keys.get((label, cls))
        if k is None:
            # Token objects only (CKA_TOKEN): pkcs11-provider's session objects for a TLS key in
            # this process carry the same label and must not count as a second key.
            found = list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label,
                                              Attribute.TOKEN: True}))
            if not found:
                what = "private key" if cls == ObjectClass.PRIVATE_KEY else "public key"
                raise KeyNotFound(f"no {what} labelled {label!r} on token "
                                  f"{self.token_label!r}")
            if len(found) > 1:
                raise KeysError(f"several keys labelled {label!r} on token "
                                f"{self.token_label!r}")
            k = found[0]
            self._keys[(label, cls)] = k
        return k

    def sign(self, key_label: str, data: bytes, algorithm: str = "rsa-sha256") -> bytes:
        """Sign ``data`` with the token key ``key_label``; the token hashes the data.

        ECDSA signatures are returned DER-encoded (X9.62), as X.509 and CMS want them.
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown signature algorithm {algorithm!r} "
                             f"(one of {', '.join(ALGORITHMS)})")
        mech, param = ALGORITHMS[algorithm]

        def op(s: Any) -> bytes:
            key = self._key(s, key_label, ObjectClass.PRIVATE_KEY)
            if algorithm == "ecdsa-sha256":
                return encode_ecdsa_signature(self._ecdsa_sha256(key, data))
            try:
                return bytes(key.sign(data, mechanism=mech, mechanism_param=param))
            except (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.KeyTypeInconsistent,
                    p11e.FunctionNotSupported):
                raise KeysError(f"token {self.token_label!r} cannot sign {algorithm} with key "
                                f"{key_label!r}") from None

        return self._run(op)

    def _ecdsa_sha256(self, key: Any, data: bytes) -> bytes:
        try:
            return bytes(key.sign(data, mechanism=Mechanism.ECDSA_SHA256))
        except (p11e.MechanismInvalid, p11e.FunctionNotSupported):
            # Tokens such as SoftHSM only offer raw CKM_ECDSA: hash here (the digest is not
            # secret), sign inside the token.
            return bytes(key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
        except p11e.KeyTypeInconsistent:
            raise KeysError(f"key is not an EC key on token {self.token_label!r}") from None

    def public_key(self, key_label: str) -> PublicKey:
        """The public half of ``key_label`` as a ``cryptography`` key (for CSRs and checks)."""

        def op(s: Any) -> PublicKey:
            pub = self._key(s, key_label, ObjectClass.PUBLIC_KEY)
            return _to_cryptography(pub)

        return self._run(op)

    def key_attributes(self, key_label: str) -> dict[str, bool]:
        """The protection attributes of a private key: sensitive, extractable, never_extractable."""

        def op(s: Any) -> dict[str, bool]:
            k = self._key(s, key_label, ObjectClass.PRIVATE_KEY)
            return {"sensitive": bool(k[Attribute.SENSITIVE]),
                    "extractable": bool(k[Attribute.EXTRACTABLE]),
                    "never_extractable": bool(k[Attribute.NEVER_EXTRACTABLE]),
                    "local": bool(k[Attribute.LOCAL])}

        return self._run(op)

    # -- certificates --------------------------------------------------------------------------

    def certificate(self, label: str) -> x509.Certificate:
        """The certificate stored with key ``label``: on the token, else in ``cert_dir``."""

        def op(s: Any) -> bytes | None:
            found = list(s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                        Attribute.LABEL: label}))
            return bytes(found[0][Attribute.VALUE]) if found else None

        der = self._run(op)
        if der is not None:
            return x509.load_der_x509_certificate(der)
        if self.cert_dir is not None:
            p = self.cert_dir / f"{label}.pem"
            if p.is_file():
                return x509.load_pem_x509_certificate(p.read_bytes())
        raise KeyNotFound(f"no certificate labelled {label!r} on token {self.token_label!r}"
                          + (f" nor in {self.cert_dir}" if self.cert_dir else ""))

    def store_certificate(self, label: str, cert: x509.Certificate) -> str:
        """Store ``cert`` next to key ``label``, replacing an older one. Returns where it went.

        The caller checks that the certificate matches the key (see ``certs.matches_key``).
        """
        der = cert.public_bytes(serialization.Encoding.DER)

        def op(s: Any) -> str:
            try:
                key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            except p11e.NoSuchKey:
                raise KeyNotFound(f"no private key labelled {label!r} on token "
                                  f"{self.token_label!r}: generate it first") from None
            key_id = bytes(key[Attribute.ID] or b"")
            old = list(s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                      Attribute.LABEL: label}))
            try:
                s.create_object({
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
                    Attribute.TOKEN: True, Attribute.PRIVATE: False,
                    Attribute.LABEL: label, Attribute.ID: key_id,
                    Attribute.SUBJECT: cert.subject.public_bytes(),
                    Attribute.ISSUER: cert.issuer.public_bytes(),
                    Attribute.SERIAL_NUMBER: _der_integer(cert.serial_number),
                    Attribute.VALUE: der,
                })
            except (p11e.TokenWriteProtected, p11e.DeviceMemory, p11e.FunctionNotSupported,
                    p11e.TemplateInconsistent) as e:
                if self.cert_dir is None:
                    raise KeysError(f"token {self.token_label!r} cannot store the certificate "
                                    f"({type(e).__name__}) and no certificate directory is set"
                                    ) from None
                return self._store_cert_file(label, cert)
            for o in old:  # only once the new one is safely stored
                o.destroy()
            return f"token {self.token_label}"

        return self._run_rw(op)

    def _store_cert_file(self, label: str, cert: x509.Certificate) -> str:
        assert self.cert_dir is not None
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        p = self.cert_dir / f"{label}.pem"
        tmp = p.with_suffix(".pem.tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, p)
        return str(p)

    # -- key generation and inventory ----------------------------------------------------------

    def generate_key(self, label: str, key_type: str = "rsa2048") -> PublicKey:
        """A new key pair on the token: private key sensitive, never extractable. Refuses to
        overwrite an existing label."""

        def op(s: Any) -> PublicKey:
            if list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                   Attribute.LABEL: label})):
                raise KeysError(f"a private key labelled {label!r} already exists on token "
                                f"{self.token_label!r}; choose another label")
            key_id = secrets.token_bytes(8)
            priv_tpl = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                        Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True,
                        Attribute.DECRYPT: False, Attribute.UNWRAP: False, Attribute.DERIVE: False}
            pub_tpl = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False,
                       Attribute.WRAP: False}
            if key_type == "rsa2048":
                pub, _ = s.generate_keypair(KeyType.RSA, 2048, label=label, id=key_id, store=True,
                                            public_template=pub_tpl, private_template=priv_tpl)
            elif key_type == "ec-p256":
                params = s.create_domain_parameters(KeyType.EC, {
                    Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
                pub, _ = params.generate_keypair(label=label, id=key_id, store=True,
                                                 public_template=pub_tpl,
                                                 private_template=priv_tpl)
            else:
                raise ValueError(f"unknown key type {key_type!r} (rsa2048 or ec-p256)")
            self._keys.clear()
            return _to_cryptography(pub)

        return self._run_rw(op)

    def objects(self) -> list[ObjectInfo]:
        """Keys and certificates on the token, for ``drimbox hsm status``."""

        def op(s: Any) -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            for o in _all(s.get_objects()):
                cls = o[Attribute.CLASS]
                label = str(o[Attribute.LABEL] or "")
                if cls == ObjectClass.CERTIFICATE:
                    c = x509.load_der_x509_certificate(bytes(o[Attribute.VALUE]))
                    out.append(ObjectInfo("certificate", label, subject=c.subject.rfc4514_string(),
                                          not_after=c.not_valid_after_utc.isoformat()))
                elif cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    kt = o[Attribute.KEY_TYPE]
                    info = ObjectInfo("private key" if cls == ObjectClass.PRIVATE_KEY
                                      else "public key", label, key_type=kt.name)
                    if kt == KeyType.RSA:
                        info.bits = len(bytes(o[Attribute.MODULUS])) * 8
                    if cls == ObjectClass.PRIVATE_KEY:
                        info.sensitive = bool(o[Attribute.SENSITIVE])
                        info.extractable = bool(o[Attribute.EXTRACTABLE])
                        info.never_extractable = bool(o[Attribute.NEVER_EXTRACTABLE])
                    out.append(info)
            return sorted(out, key=lambda i: (i.label, i.kind))

        return self._run(op)

    # -- health --------------------------------------------------------------------------------

    def probe(self) -> bool:
        """Check (blocking, a few ms) that the token still answers; updates :meth:`health`."""
        def op(s: Any) -> None:
            # C_GetTokenInfo on the slot: SoftHSM keeps answering C_FindObjects (with nothing)
            # after its store went away, but fails this (measured: CKR_GENERAL_ERROR). Then
            # C_FindObjects: every module has it (unlike C_GenerateRandom on some cards), and it
            # fails when the session or the token is gone.
            if s.token.slot.get_token().label != self.token_label:
                raise p11e.TokenNotRecognised()  # another card in the slot
            _all(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))

        try:
            self._run(op)
            return True
        except KeysError:
            return False
        except p11e.PKCS11Error as e:  # unexpected answer: report it, keep watching
            with self._lock:
                self._drop_session()
                self._set_state(False, "error", type(e).__name__)
            return False

    def health(self) -> Health:
        """Last known state, without touching the token (cheap; see :meth:`probe`)."""
        st = self._state
        return Health(ready=st.present, status=st.status,
                      details={"token": self.token_label, **({"error": st.error} if st.error
                                                             else {})})

    @property
    def present(self) -> bool:
        return self._state.present


def _all(it: Iterator[Any]) -> list[Any]:
    # python-pkcs11 holds the session lock while a search runs: always consume searches fully.
    return list(it)


def _der_integer(n: int) -> bytes:
    body = n.to_bytes((n.bit_length() + 8) // 8 or 1, "big")
    return bytes([0x02, len(body)]) + body if len(body) < 128 else (
        bytes([0x02, 0x81, len(body)]) + body)


def _to_cryptography(pub: Any) -> PublicKey:
    kt = pub[Attribute.KEY_TYPE]
    if kt == KeyType.RSA:
        n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kt == KeyType.EC:
        k = serialization.load_der_public_key(encode_ec_public_key(pub))
        assert isinstance(k, ec.EllipticCurvePublicKey)
        return k
    raise KeysError(f"unsupported key type {kt!r}")
