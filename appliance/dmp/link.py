"""The daemon's link to the DMP: builds the client from the token once it is usable.

The signature key (VIHF, XAdES) stays on the token and signs in this process. The TLS client key
(mTLS) stays on the token too, but TLS runs in the TLS gateway process (``appliance.tlsgateway``):
the client sends plain HTTP to the gateway's egress socket, so this process never loads
pkcs11-provider and can re-initialise its PKCS#11 module when the token comes back.

The client is built lazily on first use, so a token inserted after start needs no restart. While
it cannot be built, or the token cannot sign, every call raises :class:`DmpRetryableError`: the
outbox keeps the job and tries again later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appliance.component import Health
from appliance.config import Config
from appliance.keys import KeysError

from .client import DmpClient
from .errors import DmpRetryableError
from .signer import TokenSigner

log = logging.getLogger(__name__)


class DmpLink:
    name = "dmp"

    def __init__(self, config: Config, keys: Any, gateway: Any) -> None:
        self.config = config
        self.keys = keys
        self.gateway = gateway  # tlsgateway.supervisor.TlsGateway: connector() and url()
        self._client: Any = None
        self._lock: asyncio.Lock | None = None
        self.last_error = ""

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        try:
            await self._ensure()
        except DmpRetryableError as e:  # reported in health; the box still starts
            log.warning("DMP link not ready", extra={"reason": str(e)})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> Health:
        # The DMP being unreachable is reported, never fatal: reports wait in the outbox.
        status = "ok" if self._client is not None else f"not ready: {self.last_error}"
        return Health(True, status, {"url": self.config.dmp.url})

    async def _ensure(self) -> Any:
        if self._client is not None:
            return self._client
        assert self._lock is not None, "DmpLink used before start()"
        async with self._lock:
            if self._client is None:
                loop = asyncio.get_running_loop()
                try:
                    signer = await loop.run_in_executor(None, self._signer)
                    self._client = DmpClient(
                        self.config.dmp, signer, connector=self.gateway.connector(),
                        endpoint=self.gateway.url("dmp", self.config.dmp.url))
                    self.last_error = ""
                except Exception as e:
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    raise DmpRetryableError(f"DMP client unavailable: {self.last_error}") from e
        return self._client

    def _signer(self) -> TokenSigner:
        hsm = self.config.hsm
        return TokenSigner(self.keys.token, hsm.sign_key_label, self.config.dmp.signature_algorithm)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = await self._ensure()
        try:
            return await getattr(client, method)(*args, **kwargs)
        except KeysError as e:  # the token went away between two calls: it may come back
            raise DmpRetryableError(f"token unavailable: {e}") from None

    async def publish(self, submission: Any) -> Any:
        return await self._call("publish", submission)

    async def replace(self, old_entry_uuid: str, submission: Any) -> Any:
        return await self._call("replace", old_entry_uuid, submission)

    async def delete(self, entry_uuid: str, previous: Any) -> Any:
        return await self._call("delete", entry_uuid, previous)

    async def get_documents(self, unique_ids: list[str], patient: Any, actor: Any, *,
                            return_type: str = "LeafClass") -> Any:
        return await self._call("get_documents", unique_ids, patient, actor,
                                return_type=return_type)
