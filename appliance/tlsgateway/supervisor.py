"""The daemon component that runs the TLS gateway process: start, readiness, health, restarts.

- The gateway is started only while the daemon's own token is usable. The gateway logs in to the
  token too, and must never spend a PIN attempt on a PIN the daemon has not just seen accepted.
- Ready means: the process is alive and answers ``GET /_ping`` on its egress socket with its
  own pid (so a stale socket of an earlier gateway never counts).
- It dies or stops answering: it is started again after a backoff (0.5 s, doubling up to 30 s;
  back to 0.5 s once a gateway has run for 30 s).
- The token comes back after an absence (``Token.arrivals`` changed): the gateway is stopped and
  started again. A fresh process is a fresh ``C_Initialize`` for pkcs11-provider, which cannot be
  re-initialised in place (SECURITY-keys.md §3).
- Exit ``EXIT_PIN``: not started again until the PIN file changes. ``EXIT_CONFIG`` at the first
  start: the daemon stops with the gateway's message, as it did when HTTPS could not be set up.
- Stop: end of file on the liveness pipe and SIGTERM, then SIGKILL after ``stop_timeout``. The
  child also stops by itself when the daemon dies (the pipe's write end closes with it).

The child is made with fork + exec (``asyncio.create_subprocess_exec``), never a bare fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

import appliance
from appliance.component import Health
from appliance.keys.token import file_identity

from . import contract

log = logging.getLogger(__name__)

_CODE_ROOT = str(Path(appliance.__file__).resolve().parent.parent)


class TlsGateway:
    name = "tls-gateway"

    MIN_BACKOFF = 0.5
    MAX_BACKOFF = 30.0
    STABLE_AFTER = 30.0  # seconds of running that reset the backoff

    def __init__(self, config: Any, keys: Any, *, ready_timeout: float = 30.0,
                 ping_interval: float = 1.0, stop_timeout: float = 5.0) -> None:
        if config.path is None:
            raise ValueError("the TLS gateway runs with the daemon's configuration file, and "
                             "this configuration was not loaded from a file")
        self.config = config
        self.keys = keys
        self.plan = contract.plan(config)
        self.ready_timeout = ready_timeout
        self.ping_interval = ping_interval
        self.stop_timeout = stop_timeout
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._pipe_w: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled: asyncio.Event | None = None
        self._ping_session: aiohttp.ClientSession | None = None
        self._ready = False
        self._status = "not started"
        self._fatal = ""
        self._pin_refused: tuple[int, int, int] | None = None
        self._arrivals = -1  # the token arrival the running gateway was started after

    # -- for the users of egress ---------------------------------------------------------------

    def connector(self) -> aiohttp.UnixConnector:
        """A connector to the egress socket, for an aiohttp session (create it on the loop)."""
        # One connection per request: microseconds on a Unix socket, and a restarted gateway
        # never meets a connection pooled by its predecessor.
        return aiohttp.UnixConnector(path=str(self.plan.egress_socket), force_close=True)

    def url(self, upstream: str, url: str) -> str:
        """The egress URL for ``url`` of a configured upstream."""
        if upstream not in self.plan.upstreams:
            raise KeyError(f"upstream {upstream!r} is not configured")
        return contract.egress_url(upstream, url)

    # -- component -----------------------------------------------------------------------------

    async def start(self) -> None:
        for sock in (self.plan.egress_socket, self.plan.app_socket):
            contract.check_socket_path(sock)
        for d in (self.plan.app_socket.parent, self.plan.directory):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self._settled = asyncio.Event()
        self._ping_session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.plan.egress_socket), force_close=True),
            timeout=aiohttp.ClientTimeout(total=2.0))
        self._task = asyncio.create_task(self._supervise(), name="tls-gateway")
        await self._settled.wait()
        if self._fatal:
            await self.stop()
            raise RuntimeError(self._fatal)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._terminate()
        if self._ping_session is not None:
            await self._ping_session.close()
            self._ping_session = None
        self._status = "stopped"

    def health(self) -> Health:
        alive = self._proc is not None and self._proc.returncode is None
        details: dict[str, Any] = {"pid": self._proc.pid if alive and self._proc else None,
                                   "restarts": self.restarts}
        if alive and self.keys.token.arrivals != self._arrivals:
            # The token came back since this gateway started: its provider may hold dead
            # sessions, and it is about to be replaced. Not ready until then.
            return Health(False, "token back: restarting", details)
        return Health(self._ready and alive, self._status, details)

    # -- supervision ---------------------------------------------------------------------------

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    async def _supervise(self) -> None:
        backoff = self.MIN_BACKOFF
        pin_file = Path(self.config.hsm.pin_file)
        while True:
            token = self.keys.token
            if not token.present:
                self._status = "waiting for the token"
                self._settle()
                await asyncio.sleep(0.5)
                continue
            if self._pin_refused is not None:
                if file_identity(pin_file) == self._pin_refused:
                    self._status = "PIN refused; not trying again until hsm.pin_file changes"
                    self._settle()
                    await asyncio.sleep(1.0)
                    continue
                self._pin_refused = None
            try:
                code, ran = await self._run_once(token.arrivals)
            except Exception:  # noqa: BLE001 — supervision must outlive any one bad start
                log.exception("TLS gateway supervision error")
                code, ran = await self._terminate() or -1, 0.0
            if code is None:  # restarted on purpose (token back): no backoff
                backoff = self.MIN_BACKOFF
                continue
            self.restarts += 1
            reason = self._exit_reason(code)
            if code == contract.EXIT_PIN:
                self._pin_refused = file_identity(pin_file)
                continue
            if code == contract.EXIT_CONFIG and not self._settled_set():
                self._fatal = f"the TLS gateway cannot start: {reason}"
                self._settle()
                return
            if ran >= self.STABLE_AFTER:
                backoff = self.MIN_BACKOFF
            self._status = f"restarting in {backoff:g} s ({reason})"
            log.error("TLS gateway exited", extra={"exit": code, "reason": reason[:300],
                                                   "retry_in": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.MAX_BACKOFF)

    def _settled_set(self) -> bool:
        return self._settled is not None and self._settled.is_set()

    def _exit_reason(self, code: int) -> str:
        word = contract.EXIT_WORDS.get(code, f"exit code {code}")
        try:
            text = self.plan.exit_reason.read_text()[:500]
        except OSError:
            return word
        return f"{word}: {text}"

    async def _run_once(self, arrivals: int) -> tuple[int | None, float]:
        """Run one gateway process until it exits (its code) or is replaced (None)."""
        self._arrivals = arrivals
        with contextlib.suppress(FileNotFoundError):
            self.plan.exit_reason.unlink()
        self._status = "starting"
        read_end, self._pipe_w = os.pipe()  # both ends close-on-exec; read_end is passed
        # The child imports the very code the daemon runs, wherever that was found.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [_CODE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "appliance.tlsgateway", "-c", str(self.config.path),
                "--parent-fd", str(read_end), stdin=subprocess.DEVNULL, pass_fds=(read_end,),
                env=env,
                # Its own session: no controlling terminal for pkcs11-provider to prompt on,
                # and a Ctrl-C on `drimbox run` reaches the daemon only (which stops it).
                start_new_session=True)
        finally:
            os.close(read_end)
        started = time.monotonic()
        proc = self._proc
        if not await self._wait_ready(proc):
            if proc.returncode is None:
                log.error("TLS gateway not ready in time", extra={"pid": proc.pid})
            return await self._terminate(), time.monotonic() - started
        self._ready, self._status = True, "ok"
        self._settle()
        log.info("TLS gateway running", extra={"pid": proc.pid})
        failures = 0
        # One waiter for the life of the process (wait_for would cancel and remake one per tick).
        exited = asyncio.ensure_future(proc.wait())
        while True:
            done, _ = await asyncio.wait({exited}, timeout=self.ping_interval)
            if done:
                self._ready = False
                self._close_pipe()
                return exited.result(), time.monotonic() - started
            token = self.keys.token
            if token.present and token.arrivals != arrivals:
                log.info("token back: restarting the TLS gateway", extra={"pid": proc.pid})
                await self._terminate()
                return None, time.monotonic() - started
            if await self._ping(proc.pid):
                failures = 0
                self._ready, self._status = True, "ok"
            else:
                failures += 1
                self._ready, self._status = False, "not answering"
                if failures >= 3:
                    log.error("TLS gateway not answering; restarting", extra={"pid": proc.pid})
                    return await self._terminate(), time.monotonic() - started

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            if await self._ping(proc.pid):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _ping(self, pid: int) -> bool:
        assert self._ping_session is not None
        try:
            async with self._ping_session.get(f"http://{contract.EGRESS_HOST}/_ping") as r:
                return r.status == 200 and (await r.json()).get("pid") == pid
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False

    def _close_pipe(self) -> None:
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None

    async def _terminate(self) -> int:
        """Stop the current gateway (if any) and return its exit code."""
        proc = self._proc
        self._ready = False
        self._close_pipe()  # end of file: the child stops by itself as well
        if proc is None:
            return 0
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except asyncio.TimeoutError:
                log.error("TLS gateway did not stop; killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode if proc.returncode is not None else 0
