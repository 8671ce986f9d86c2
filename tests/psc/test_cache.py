"""The introspection cache on its own (no process): lifetimes, failures, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from appliance.psc.cache import INACTIVE_TTL, IntrospectionCache
from appliance.psc.model import Introspection


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fetcher(result: Introspection, calls: list[int], delay: float = 0.0):
    async def fetch() -> Introspection:
        calls.append(1)
        await asyncio.sleep(delay)
        return result
    return fetch


async def test_active_answer_kept_for_the_ttl_but_never_past_exp() -> None:
    clock, calls = Clock(), []
    cache = IntrospectionCache(30, clock)
    long = Introspection(True, expires_at=clock.now + 120)
    short = Introspection(True, expires_at=clock.now + 10)
    for token, result, kept in (("a", long, 30), ("b", short, 10)):
        calls.clear()
        start = clock.now
        await cache.get(token, fetcher(result, calls))
        clock.now = start + kept - 0.1
        await cache.get(token, fetcher(result, calls))
        assert len(calls) == 1
        clock.now = start + kept + 0.1
        await cache.get(token, fetcher(result, calls))
        assert len(calls) == 2
        clock.now = start


async def test_inactive_answer_kept_a_few_seconds_only() -> None:
    clock, calls = Clock(), []
    cache = IntrospectionCache(30, clock)
    await cache.get("t", fetcher(Introspection(False), calls))
    clock.now += INACTIVE_TTL + 0.1
    await cache.get("t", fetcher(Introspection(False), calls))
    assert len(calls) == 2


async def test_failures_are_not_kept_and_cancellation_spares_the_others() -> None:
    cache, calls = IntrospectionCache(30, Clock()), []

    async def broken() -> Introspection:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await cache.get("t", broken)
    ok = Introspection(True, expires_at=Clock().now + 60)
    first = asyncio.create_task(cache.get("t", fetcher(ok, calls, delay=0.2)))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(cache.get("t", fetcher(ok, calls)))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second) is ok and len(calls) == 1
    assert (await cache.get("t", fetcher(ok, calls))) is ok and len(calls) == 1


def test_tokens_are_keyed_by_their_hash() -> None:
    cache = IntrospectionCache(30)
    assert cache.key("secret-token") != b"secret-token" and len(cache.key("x")) == 32
