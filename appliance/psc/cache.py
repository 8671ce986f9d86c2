"""The introspection cache: answers kept in memory under the SHA-256 of the token (never the
token itself), for at most ``ttl`` seconds and never past the token's ``exp``; an inactive
answer for a few seconds only. Concurrent lookups of one token share one call."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from .model import Introspection

#: An inactive answer is kept this long at most (a token PSC just issued may be retried soon).
INACTIVE_TTL = 5.0
MAX_ENTRIES = 10_000


class IntrospectionCache:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[bytes, tuple[Introspection, float]] = {}
        self._pending: dict[bytes, asyncio.Future[Introspection]] = {}

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    async def get(self, token: str,
                  fetch: Callable[[], Awaitable[Introspection]]) -> Introspection:
        key = self.key(token)
        now = self.clock()
        hit = self._entries.get(key)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._entries[key]
        task = self._pending.get(key)
        if task is None:
            # Its own task: a caller that gives up (cancelled) does not cancel the others' call.
            task = asyncio.ensure_future(fetch())
            self._pending[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: bytes, task: asyncio.Future[Introspection]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._store(key, task.result())

    def _store(self, key: bytes, result: Introspection) -> None:
        now = self.clock()
        until = now + (min(self.ttl, result.expires_at - now) if result.active
                       else min(self.ttl, INACTIVE_TTL))
        if until <= now:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (result, until)

    def clear(self) -> None:
        self._entries.clear()
