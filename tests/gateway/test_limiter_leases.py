"""The Redis limiter's leases (usage/gateway/limits.py): a busy key is admitted without a round trip
per request, yet no number of processes ever admits more than the limit, and slots a lease did not
use go back to the shared counters."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis
from django.conf import settings

from openbili.core.errors import RateLimited
from tests.gateway.limiter_support import a_key, fresh_window
from usage.gateway import limits
from usage.gateway.limits import Limiter

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="leases exist only with Redis")


def request_count(key) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        name = f"{limits.PREFIX}:k{key.id}:r:{int(time.time() // limits.WINDOW)}"
        return int(client.get(name) or 0)
    finally:
        client.close()


def counting_round_trips(limiter: Limiter) -> list[int]:
    calls = [0]
    script = limiter.admit_script

    async def counted(**kwargs):
        calls[0] += 1
        return await script(**kwargs)

    limiter.admit_script = counted
    return calls


@pytest.fixture
async def new_limiter():
    """Limiters on the test Redis (one per simulated process), closed after the test; the test
    starts well inside a rate window."""
    fresh_window()
    made: list[Limiter] = []

    def make() -> Limiter:
        made.append(Limiter(settings.REDIS_URL))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.close()


async def admit_all(limiter: Limiter, key, count: int) -> tuple[int, int]:
    """Admit `count` requests concurrently: (admitted, refused)."""
    results = await asyncio.gather(*(limiter.admit(key) for _ in range(count)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert all(r is None or isinstance(r, RateLimited) for r in results), results
    return count - len(refused), len(refused)


async def test_a_busy_key_is_admitted_without_a_round_trip_per_request(new_limiter):
    limiter = new_limiter()
    calls = counting_round_trips(limiter)
    key = a_key(rpm=100_000)
    for _ in range(20):
        assert await admit_all(limiter, key, 50) == (50, 0)
    assert calls[0] < 100  # 1,000 requests
    assert 1_000 <= request_count(key) <= 1_000 + limits.MAX_LEASE
    # What the last lease did not use goes back once it expires.
    await asyncio.sleep(limits.LEASE_SECONDS + 3 * limits.FLUSH_SECONDS)
    assert request_count(key) == 1_000


async def test_a_quiet_key_takes_one_slot_at_a_time(new_limiter):
    limiter = new_limiter()
    calls = counting_round_trips(limiter)
    key = a_key(rpm=1_000)
    for _ in range(3):
        await limiter.admit(key)
        await asyncio.sleep(limits.LEASE_SECONDS * 1.5)
    assert calls[0] == 3
    assert request_count(key) == 3


async def test_two_processes_never_admit_more_than_the_limit(new_limiter):
    first, second = new_limiter(), new_limiter()
    key = a_key(rpm=500)
    admitted = refused = 0
    for _ in range(8):  # 8 rounds of 2 x 60 concurrent requests: 960 for 500 slots
        (a, ra), (b, rb) = await asyncio.gather(admit_all(first, key, 60), admit_all(second, key, 60))
        admitted, refused = admitted + a + b, refused + ra + rb
        assert admitted <= 500
        assert request_count(key) <= 500
    assert refused >= 960 - 500
    # Slots held by a lease when the other process was refused come back: the limit is then
    # reached exactly.
    await asyncio.sleep(limits.LEASE_SECONDS + 3 * limits.FLUSH_SECONDS)
    while True:
        try:
            await second.admit(key)
        except RateLimited:
            break
        admitted += 1
    assert admitted == 500
    assert request_count(key) == 500


async def test_near_the_limit_every_request_is_checked_exactly(new_limiter):
    limiter = new_limiter()
    key = a_key(rpm=20)
    assert await admit_all(limiter, key, 30) == (20, 10)
    assert request_count(key) == 20
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(key)
    assert refused.value.limits["requests"] == (20, 0, refused.value.retry_after)


async def test_the_account_limit_is_shared_by_its_keys_under_leases(new_limiter):
    limiter = new_limiter()
    first = a_key(account_rpm=300)
    second = SimpleNamespace(**{**vars(first), "id": first.id + 1})
    (a, _), (b, _) = await asyncio.gather(admit_all(limiter, first, 200), admit_all(limiter, second, 200))
    assert a + b <= 300
    await asyncio.sleep(limits.LEASE_SECONDS + 3 * limits.FLUSH_SECONDS)
    extra = 0
    while True:
        try:
            await limiter.admit(first)
        except RateLimited:
            break
        extra += 1
    assert a + b + extra == 300
