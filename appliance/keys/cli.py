"""``drimbox hsm …``: token tooling. Every command takes ``-c FILE`` and uses its ``[hsm]`` section.

    init         create a SoftHSM token for development (PIN written to hsm.pin_file, mode 0600)
    keygen       RSA 2048 (or EC P-256) key pair on the token: sensitive, never extractable
    csr          PKCS#10 request signed by the token, to file with IGC-Santé
    import-cert  store the issued certificate next to its key (refused if it does not match)
    status       module, token, keys, certificates and their expiry
    test-pki     an IGC-Santé-shaped test PKI on SoftHSM, for the demo

``register(subparsers)`` adds the tree to the top-level parser; ``run(args)`` executes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from appliance import config as config_mod

from . import certs, softhsm
from . import module as p11module
from .csr import make_csr, parse_subject
from .errors import CertificateRefused, KeysError
from .token import Token


def _config(args: argparse.Namespace) -> config_mod.Config:
    try:
        return config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise _Exit(2, f"configuration error: {e}") from None


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _token(cfg: config_mod.Config) -> Token:
    return Token.from_config(cfg.hsm, cert_dir=cfg.box.data_dir / "certs")


def cmd_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    h = cfg.hsm
    if not softhsm.is_softhsm(h.module):
        raise _Exit(1, f"`hsm init` creates SoftHSM development tokens only; {h.module} is not "
                       "SoftHSM. Initialise a real HSM or card with its own tools")
    if softhsm.token_exists(h.token_label):
        print(f"token {h.token_label!r} already exists; nothing to do")
        return 0
    if h.pin_file.exists():
        pin = h.pin_file.read_text().rstrip("\r\n")
        print(f"using the PIN in {h.pin_file}")
    else:
        pin = softhsm.new_pin()
        softhsm.write_secret(h.pin_file, pin)
        print(f"new PIN written to {h.pin_file} (mode 0600)")
    so_file = h.pin_file.with_name(h.pin_file.name + ".so-pin")
    so_pin = softhsm.new_pin(12)
    softhsm.write_secret(so_file, so_pin)
    softhsm.init_token(h.token_label, pin, so_pin)
    where = os.environ.get("SOFTHSM2_CONF", "/etc/softhsm/softhsm2.conf")
    print(f"token {h.token_label!r} created (SoftHSM config {where}); SO PIN in {so_file}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _token(cfg) as tok:
        pub = tok.generate_key(args.label, args.type)
        attrs = tok.key_attributes(args.label)
    spki = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    print(f"key {args.label!r} generated on token {cfg.hsm.token_label!r} ({args.type}); "
          f"sensitive={attrs['sensitive']} extractable={attrs['extractable']}")
    print(f"public key SHA-256: {digest.finalize().hex()}")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    cfg = _config(args)
    subject = parse_subject(args.subject)
    with _token(cfg) as tok:
        pem = make_csr(tok, args.label, subject, args.dns or ())
    out = Path(args.out)
    out.write_bytes(pem)
    print(f"certificate request for {subject.rfc4514_string()} written to {out}")
    return 0


def cmd_import_cert(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        chain = x509.load_pem_x509_certificates(Path(args.cert).read_bytes())
    except (OSError, ValueError) as e:
        raise _Exit(1, f"cannot read certificate {args.cert}: {e}") from None
    leaf = chain[0]
    with _token(cfg) as tok:
        if not certs.matches_key(leaf, tok.public_key(args.label)):
            raise CertificateRefused(f"certificate {certs.describe(leaf)} does not match token "
                                     f"key {args.label!r}; nothing imported")
        certs.check_validity(leaf)
        trust = certs.load_pem_certificates(cfg.hsm.trust_anchors)
        if trust:
            certs.validate_chain(leaf, trust + chain[1:])
        where = tok.store_certificate(args.label, leaf)
    exp = certs.expiry(leaf)
    print(f"certificate {certs.describe(leaf)} stored with key {args.label!r} in {where}; "
          f"expires {exp.not_after:%Y-%m-%d} ({int(exp.days_left)} days)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    h = cfg.hsm
    print(f"module: {h.module}")
    tok = _token(cfg)
    try:
        tok.open()
    except KeysError as e:
        print(f"token {h.token_label!r}: {tok.health().status}: {e}")
        return 1
    try:
        lib = tok._lib
        print(f"library: {p11module.describe(str(h.module))}")
        with tok._lock:
            for slot in lib.get_slots(token_present=True):
                label = slot.get_token().label
                if not label:
                    continue  # SoftHSM's free slot: no token initialised there
                mark = "  <- hsm.token_label" if label == h.token_label else ""
                print(f"slot {slot.slot_description.strip()!r}: token {label!r}{mark}")
        print(f"token: {h.token_label!r}: ready")
        worst = 0
        for o in tok.objects():
            if o.kind == "certificate":
                c = tok.certificate(o.label)
                exp = certs.expiry(c)
                worst = max(worst, {"ok": 0, "warning": 1}.get(exp.level, 2))
                print(f"  certificate {o.label!r}: {o.subject}; expires {o.not_after[:10]} "
                      f"({int(exp.days_left)} days, {exp.level})")
            elif o.kind == "private key":
                print(f"  private key {o.label!r}: {o.key_type} {o.bits or ''} "
                      f"sensitive={o.sensitive} extractable={o.extractable} "
                      f"never_extractable={o.never_extractable}")
        return 0 if worst < 2 else 3
    finally:
        tok.close()


def cmd_test_pki(args: argparse.Namespace) -> int:
    from .testpki import make_test_pki

    cfg = _config(args)
    if not softhsm.is_softhsm(cfg.hsm.module):
        raise _Exit(1, "the test PKI lives on SoftHSM; set hsm.module to libsofthsm2.so")
    out = Path(args.out).resolve()
    pki = make_test_pki(out)
    print(f"test PKI written to {out}")
    print(f"export SOFTHSM2_CONF={pki.softhsm_conf}")
    for i, s in enumerate(pki.structures):
        print(f"\n# structure {s.structure_id} ({s.spec.name})\n[hsm]")
        print(f'module = "{pki.module}"\ntoken_label = "{s.token_label}"\n'
              f'pin_file = "{s.pin_file}"\nauth_key_label = "auth"\nsign_key_label = "sign"\n'
              f'trust_anchors = ["{pki.bundle}"]')
        print(f"# certificates: {s.auth_cert} {s.sign_cert} {s.server_cert}")
    return 0


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="FILE", type=Path,
                   help="configuration file; its [hsm] section names module, token and PIN file")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``hsm`` and its commands to the top-level ``drimbox`` parser."""
    hsm = subparsers.add_parser("hsm", help="token (HSM, card, SoftHSM) tooling")
    sub = hsm.add_subparsers(dest="hsm_command", metavar="ACTION", required=True)
    p = sub.add_parser("init", help="create a SoftHSM token for development")
    _config_arg(p)
    p.set_defaults(func=run, hsm_func=cmd_init)
    p = sub.add_parser("keygen", help="generate a key pair on the token (non-extractable)")
    _config_arg(p)
    p.add_argument("--label", required=True)
    p.add_argument("--type", choices=["rsa2048", "ec-p256"], default="rsa2048")
    p.set_defaults(func=run, hsm_func=cmd_keygen)
    p = sub.add_parser("csr", help="write a PKCS#10 request signed by the token")
    _config_arg(p)
    p.add_argument("--label", required=True)
    p.add_argument("--subject", required=True,
                   help='e.g. "CN=DRIMBOX-1,OU=<structure id>,O=CABINET X,ST=Paris,C=FR"')
    p.add_argument("--dns", action="append", help="subjectAltName DNS name (repeatable)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run, hsm_func=cmd_csr)
    p = sub.add_parser("import-cert", help="store an issued certificate next to its key")
    _config_arg(p)
    p.add_argument("--label", required=True)
    p.add_argument("--cert", required=True, type=Path)
    p.set_defaults(func=run, hsm_func=cmd_import_cert)
    p = sub.add_parser("status", help="modules, token, keys, certificates, expiry dates")
    _config_arg(p)
    p.set_defaults(func=run, hsm_func=cmd_status)
    p = sub.add_parser("test-pki", help="build an IGC-Santé-shaped test PKI on SoftHSM (demo)")
    _config_arg(p)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run, hsm_func=cmd_test_pki)
    return hsm


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.hsm_func(args) or 0)
    except _Exit as e:
        print(f"drimbox hsm: {e}", file=sys.stderr)
        return e.code
    except KeysError as e:
        print(f"drimbox hsm {args.hsm_command}: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m appliance.keys.cli hsm …``) until wired into ``drimbox``."""
    parser = argparse.ArgumentParser(prog="drimbox")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
