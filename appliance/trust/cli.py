"""``drimbox whitelist …``: check a national whitelist by hand, show the box's stored one.

    verify FILE --anchor CERT [...]   verify a ListeBlancheDRIM-M file; exit 0 and a summary, or
                                      exit 2 and the reason on stderr. Revocation is best-effort
                                      (said in the summary) unless --require-revocation.
    show -c CONFIG                    the list the box keeps in <data_dir>/trust/whitelist.xml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance import config as config_mod
from appliance.keys import certs
from appliance.keys.errors import CertificateRefused

from .crl import CrlSource, CrlUnavailable
from .whitelist import Whitelist, WhitelistRefused, verify

REFUSED = 2


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _Exit(REFUSED, f"cannot read {what} {path}: {e.strerror or e}") from None


def _anchors(paths: list[Path]) -> list[Any]:
    try:
        return certs.load_pem_certificates(paths)
    except CertificateRefused as e:
        raise _Exit(REFUSED, str(e)) from None


def _print_summary(wl: Whitelist, source: Path) -> None:
    print(f"{source}: list verified")
    print(wl.summary())


def cmd_verify(args: argparse.Namespace) -> int:
    anchors = _anchors(args.anchor)
    try:
        crls = CrlSource(None, timeout=args.timeout, local=args.crl or ())
    except CrlUnavailable as e:
        raise _Exit(REFUSED, str(e)) from None
    current = None
    if args.current is not None:
        try:
            current = verify(_read(args.current, "current list"), anchors,
                             signer_cn=args.signer_cn, signer_ou=args.signer_ou,
                             revocation="off")
        except WhitelistRefused as e:
            raise _Exit(REFUSED, f"the current list {args.current} does not verify: {e}") \
                from None
    data = _read(args.file, "list")
    try:
        wl = verify(data, anchors, signer_cn=args.signer_cn, signer_ou=args.signer_ou,
                    revocation="require" if args.require_revocation else "best-effort",
                    crls=crls, current=current)
    except WhitelistRefused as e:
        raise _Exit(REFUSED, f"{args.file}: refused: {e}") from None
    _print_summary(wl, args.file)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise _Exit(REFUSED, f"configuration error: {e}") from None
    from .service import WhitelistService

    svc = WhitelistService.from_config(cfg)
    if not svc.stored.is_file():
        raise _Exit(1, f"no whitelist stored at {svc.stored} yet")
    anchors = _anchors(list(cfg.trust.whitelist_anchors or cfg.hsm.trust_anchors))
    try:
        wl = verify(_read(svc.stored, "stored list"), anchors,
                    signer_cn=cfg.trust.whitelist_signer_cn,
                    signer_ou=cfg.trust.whitelist_signer_ou,
                    revocation="off" if cfg.trust.revocation == "off" else "best-effort",
                    crls=CrlSource(svc.dir / "crl", timeout=cfg.trust.fetch_timeout))
    except WhitelistRefused as e:
        raise _Exit(REFUSED, f"the stored list {svc.stored} no longer verifies: {e}") from None
    _print_summary(wl, svc.stored)
    for d in wl.domains:
        print(f"  {d.identifier:>6}  {d.db:<40} {d.vi:<40} {d.denomination}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``whitelist`` and its commands to the top-level ``drimbox`` parser."""
    from appliance.cli import _add_config_arg

    wl = subparsers.add_parser("whitelist", help="national whitelist (ListeBlancheDRIM-M) tools")
    sub = wl.add_subparsers(dest="whitelist_command", metavar="ACTION", required=True)
    p = sub.add_parser("verify", help="verify a signed ListeBlancheDRIM-M file")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--anchor", action="append", type=Path, required=True, metavar="CERT",
                   help="PEM trust anchor of the signer's chain (repeatable)")
    p.add_argument("--crl", action="append", type=Path, metavar="FILE",
                   help="local CRL file (DER or PEM) used before the distribution points")
    p.add_argument("--signer-cn", default="Liste Blanche DRIM-M")
    p.add_argument("--signer-ou", default="318751275100020")
    p.add_argument("--require-revocation", action="store_true",
                   help="refuse the list when a CRL cannot be obtained")
    p.add_argument("--current", type=Path, metavar="FILE",
                   help="the list in use: a list older than it is refused")
    p.add_argument("--timeout", type=float, default=10.0, help="CRL fetch timeout (seconds)")
    p.set_defaults(func=run, whitelist_func=cmd_verify)
    p = sub.add_parser("show", help="summary of the list the box has stored")
    _add_config_arg(p)
    p.set_defaults(func=run, whitelist_func=cmd_show)
    return wl


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.whitelist_func(args) or 0)
    except _Exit as e:
        print(f"drimbox whitelist: {e}", file=sys.stderr)
        return e.code
