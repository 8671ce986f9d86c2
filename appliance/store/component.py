"""The store as a daemon component: opened first, closed last, reports its fill level."""

from __future__ import annotations

import asyncio

from appliance.component import Health

from .instances import Store


class StoreComponent:
    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._open = False

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.store.open)
        self._open = True

    async def stop(self) -> None:
        if self._open:
            self.store.close()
            self._open = False

    def health(self) -> Health:
        if not self._open:
            return Health(False, "closed")
        used, limit = self.store.used_bytes, self.store.max_bytes
        status = "ok" if used < 0.95 * limit else "nearly full"
        return Health(True, status, {"used_bytes": used, "max_bytes": limit,
                                     "schema_version": self.store.db.version})
