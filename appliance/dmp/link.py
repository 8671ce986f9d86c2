"""The daemon's link to the DMP: builds the client from the token once it is usable.

The signature key (VIHF, XAdES) and the TLS client key (mTLS) stay on the token. The client is
built lazily on first use and rebuilt after a failure, so a token inserted after start, or a DMP
configuration fixed by an operator, needs no restart. While it cannot be built, every call raises
:class:`DmpRetryableError`: the outbox keeps the job and tries again later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appliance.component import Health
from appliance.config import Config

from .errors import DmpRetryableError

log = logging.getLogger(__name__)


class DmpLink:
    name = "dmp"

    def __init__(self, config: Config, keys: Any) -> None:
        self.config = config
        self.keys = keys
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
                    self._client = await loop.run_in_executor(None, self._build)
                    self.last_error = ""
                except Exception as e:
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    raise DmpRetryableError(f"DMP client unavailable: {self.last_error}") from e
        return self._client

    def _build(self) -> Any:
        from appliance.dmp.client import DmpClient
        from appliance.dmp.signer import TokenSigner
        from appliance.keys import certs, tls
        from appliance.keys.chain import chain_for, write_chain

        hsm = self.config.hsm
        token = self.keys.token
        signer = TokenSigner(token, hsm.sign_key_label, self.config.dmp.signature_algorithm)
        pool = certs.load_pem_certificates(hsm.trust_anchors)
        leaf = token.certificate(hsm.auth_key_label)
        chain_file = write_chain(self.config.runtime_dir / f"{hsm.auth_key_label}-chain.pem",
                                 chain_for(leaf, pool))
        ctx = tls.client_context(hsm, hsm.auth_key_label, chain_file,
                                 cafile=self.config.dmp.ca_file)
        return DmpClient(self.config.dmp, signer, ctx)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = await self._ensure()
        return await getattr(client, method)(*args, **kwargs)

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
