"""``python -m appliance.tlsgateway -c FILE [--parent-fd N]``: the TLS gateway process.

Started by the daemon's ``tls-gateway`` component with the daemon's own configuration file. It
loads pkcs11-provider, builds the token TLS contexts with :mod:`appliance.keys.tls`, then serves
ingress and egress (see the package docstring) until SIGTERM, or until the daemon is gone: the
daemon holds the write end of a pipe whose read end is ``--parent-fd``; end of file on it means
the daemon died, so the gateway never outlives it (no ``preexec_fn`` needed).

Exit codes (``contract.EXIT_*``) tell the supervisor whether to start it again.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import config as config_mod
from appliance import logs

from . import contract, egress, ingress

log = logging.getLogger("appliance.tlsgateway")


class _Fatal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def token_contexts(cfg: Any, plan: contract.Plan
                   ) -> tuple[ssl.SSLContext | None, dict[str, egress.Route]]:
    """The HTTPS server context (ingress) and one route per upstream, TLS keys on the token.

    A token that is absent, or a refused PIN, stops the gateway (the supervisor decides when to
    try again). An upstream whose certificate is refused only makes that upstream unavailable.
    """
    from appliance.keys import KeysError, PinError, Token, TokenAbsent, certs, provider, tls
    from appliance.keys.chain import chain_for, write_chain

    keys_dir = plan.directory / "keys"
    provider.set_runtime_dir(keys_dir)
    try:
        token = Token.from_config(cfg.hsm, cert_dir=cfg.box.data_dir / "certs")
        token.open()  # kept open: see tls._keep_open for why sessions live as long as the process
        pool = certs.load_pem_certificates(cfg.hsm.trust_anchors)

        def chain(label: str) -> Path:
            return write_chain(plan.directory / f"{label}-chain.pem",
                               chain_for(token.certificate(label), pool))

        server = None
        if plan.ingress:
            http = cfg.http if cfg.http.cert_file else dataclasses.replace(
                cfg.http, cert_file=chain(cfg.http.server_key_label))
            server = tls.box_server_context(dataclasses.replace(cfg, http=http), keys_dir)
        routes: dict[str, egress.Route] = {}
        for name, up in plan.upstreams.items():
            try:
                ctx = tls.client_context(cfg.hsm, cfg.hsm.auth_key_label,
                                         chain(cfg.hsm.auth_key_label), cafile=up.ca_file)
                routes[name] = egress.Route(up, ctx)
            except (TokenAbsent, PinError):
                raise
            except KeysError as e:
                log.error("upstream unavailable", extra={"upstream": name, "error": str(e)})
                routes[name] = egress.Route(up, None, unavailable=str(e))
    except TokenAbsent as e:
        raise _Fatal(contract.EXIT_TEMPFAIL, str(e)) from None
    except PinError as e:
        raise _Fatal(contract.EXIT_PIN, str(e)) from None
    except KeysError as e:
        raise _Fatal(contract.EXIT_CONFIG, str(e)) from None
    return server, routes


async def serve(cfg: Any, plan: contract.Plan, server_ctx: ssl.SSLContext | None,
                routes: dict[str, egress.Route], parent_fd: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent_fd is not None:
        def parent_gone() -> None:
            if not os.read(parent_fd, 64):
                log.warning("the daemon is gone; the TLS gateway stops")
                loop.remove_reader(parent_fd)
                stop.set()

        loop.add_reader(parent_fd, parent_gone)

    runners: list[web.AppRunner] = []
    opts: dict[str, Any] = dict(access_log=None, handle_signals=False, shutdown_timeout=2.0,
                                auto_decompress=False)  # bodies cross as they came
    try:
        if plan.ingress:
            # The keep-alive timer also bounds a slow or silent client's request head.
            runner = web.AppRunner(ingress.make_app(plan.app_socket), **opts,
                                   keepalive_timeout=cfg.http.keepalive_timeout)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, cfg.http.bind, cfg.http.port, ssl_context=server_ctx,
                                  reuse_address=True).start()
            except OSError as e:
                raise _Fatal(contract.EXIT_CONFIG, f"cannot listen on {cfg.http.bind}:"
                             f"{cfg.http.port} (http.bind, http.port): {e.strerror}") from None
        # Egress last: the supervisor's ping on its socket means everything is up.
        runner = web.AppRunner(egress.make_app(routes, {"ingress": plan.ingress}), **opts)
        await runner.setup()
        runners.append(runner)
        await web.UnixSite(runner, str(plan.egress_socket)).start()
        os.chmod(plan.egress_socket, 0o600)
        log.info("TLS gateway ready", extra={"ingress": plan.ingress,
                                             "upstreams": ",".join(routes)})
        await stop.wait()
    finally:
        for r in runners:
            await r.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.tlsgateway",
                                description="The box's TLS gateway (started by `drimbox run`).")
    p.add_argument("-c", "--config", required=True, type=Path)
    p.add_argument("--parent-fd", type=int, help="read end of the daemon's liveness pipe")
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"drimbox tls-gateway: configuration error: {e}", file=sys.stderr)
        return contract.EXIT_CONFIG
    logs.setup(cfg.box.log_level, cfg.box.log_format)
    os.umask(0o077)  # sockets, chains, key files: for this user only
    plan = contract.plan(cfg)
    try:
        for sock in (plan.egress_socket, plan.app_socket):
            contract.check_socket_path(sock)
        plan.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(plan.directory, 0o700)
        server_ctx, routes = token_contexts(cfg, plan)
        asyncio.run(serve(cfg, plan, server_ctx, routes, args.parent_fd))
    except _Fatal as e:
        return _last_words(plan, e.code, str(e))
    except ValueError as e:  # socket path too long
        return _last_words(plan, contract.EXIT_CONFIG, str(e))
    return 0


def _last_words(plan: contract.Plan, code: int, message: str) -> int:
    """Log why the gateway cannot run and leave it for the supervisor (health, start error)."""
    log.error("TLS gateway cannot run", extra={"error": message, "exit": code})
    print(f"drimbox tls-gateway: {message}", file=sys.stderr)
    try:
        plan.exit_reason.write_text(message[:2000])
    except OSError:
        pass
    return code


if __name__ == "__main__":
    raise SystemExit(main())
