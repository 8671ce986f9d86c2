"""The daemon's link to Pro Santé Connect: builds the client on the TLS gateway lazily (like
``appliance.dmp.link``) and fetches the discovery document in the background.

PSC being down is reported in health, never fatal (``ready`` stays True): it only makes peer
reads answer 503 and logins wait.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appliance.component import Health
from appliance.config import Config

from .client import Login, PscClient
from .errors import PscUnavailable
from .model import Introspection, Professional

log = logging.getLogger(__name__)


class PscLink:
    name = "psc"

    def __init__(self, config: Config, gateway: Any) -> None:
        self.config = config
        self.gateway = gateway  # tlsgateway.supervisor.TlsGateway: connector() and url()
        self._client: PscClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.discovered = False
        self.last_error = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._discover(), name="psc-discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> Health:
        status = "ok" if self.discovered else f"discovery not done: {self.last_error or '…'}"
        return Health(True, status, {"discovery_url": self.config.psc.discovery_url})

    def client(self) -> PscClient:
        if self._client is None:
            try:
                self._client = PscClient(
                    self.config.psc, self.gateway.connector(),
                    lambda url: self.gateway.url("psc", url))
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                raise PscUnavailable(f"PSC client unavailable: {self.last_error}") from e
        return self._client

    async def _discover(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.client().discovery()
                self.discovered, self.last_error = True, ""
                return
            except PscUnavailable as e:
                self.last_error = str(e)[:300]
                log.warning("PSC discovery failed", extra={"reason": self.last_error})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.client(), method)(*args)
        except PscUnavailable as e:
            self.discovered, self.last_error = False, str(e)[:300]
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._discover(), name="psc-discovery")
            raise

    async def check_access_token(self, token: str, audience: str | None = None
                                 ) -> Professional:
        return await self._call("check_access_token", token, audience)

    async def introspect(self, token: str) -> Introspection:
        return await self._call("introspect", token)

    async def authorization_url(self, state: str, nonce: str, code_challenge: str,
                                redirect_uri: str) -> str:
        return await self._call("authorization_url", state, nonce, code_challenge, redirect_uri)

    async def exchange_code(self, code: str, code_verifier: str, redirect_uri: str,
                            nonce: str) -> Login:
        return await self._call("exchange_code", code, code_verifier, redirect_uri, nonce)

    async def userinfo(self, access_token: str) -> Professional:
        return await self._call("userinfo", access_token)
