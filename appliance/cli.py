"""The ``drimbox`` command line: run the daemon, check configuration, token tooling, the
national whitelist, demo data."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from appliance import __version__, config as config_mod, logs


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="FILE", type=Path,
                   help="configuration file (TOML, see docs/ARCHITECTURE.md §7)")


def _load(path: Path) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        print(f"drimbox: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    logs.setup(cfg.box.log_level, cfg.box.log_format)
    from appliance.box import build

    daemon = build(cfg)
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        print(f"drimbox: {e}", file=sys.stderr)
        return 1


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: configuration is valid (box {cfg.box.name!r})")
    return 0


def cmd_config_example(_args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.example())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from appliance.generate import synthetic_study

    paths = synthetic_study(args.kind, args.slices, out_dir=args.out, study_uid=args.study_uid,
                            accession=args.accession, patient_id=args.patient_id,
                            series=args.series)
    print(f"wrote {len(paths)} instances to {args.out}")
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    from appliance.web.admin import ensure_token

    print(ensure_token(_load(args.config)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drimbox", description="Open DRIMbox appliance (DRIM-M).")
    p.add_argument("--version", action="version", version=f"drimbox {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config_arg(run)
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = cfg_sub.add_parser("check", help="validate a configuration file and exit")
    _add_config_arg(check)
    check.set_defaults(func=cmd_config_check)
    ex = cfg_sub.add_parser("example", help="print a complete example configuration")
    ex.set_defaults(func=cmd_config_example)

    adm = sub.add_parser("admin", help="admin API tools")
    adm_sub = adm.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    tok = adm_sub.add_parser("token", help="print the admin API bearer token (created if absent)")
    _add_config_arg(tok)
    tok.set_defaults(func=cmd_admin_token)

    from appliance.audit.cli import register as register_audit
    from appliance.keys.cli import register as register_hsm

    register_hsm(sub)
    register_audit(sub)

    from appliance.trust.cli import register as register_whitelist

    register_whitelist(sub)

    gen = sub.add_parser("generate", help="write a synthetic study (tests, benchmarks, demo)")
    gen.add_argument("--kind", choices=["CT", "MR"], default="CT")
    gen.add_argument("--slices", type=int, default=10)
    gen.add_argument("--series", type=int, default=1)
    gen.add_argument("--study-uid")
    gen.add_argument("--accession")
    gen.add_argument("--patient-id")
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
