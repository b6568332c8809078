"""TPM reserved at admission and corrected at settle (usage/gateway/limits.py, CONTRACT §2.2): a
burst of large requests can never overshoot the token limit, across processes and under leases,
and the room a request did not use goes back to the window when it settles."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
import redis
from django.conf import settings

from billing.models import ApiKey
from billing.money import TokenUsage
from openbili.core.errors import RateLimited
from tests.gateway.limiter_support import a_key, fresh_window
from tests.gateway.support import MSG, wait_until
from tests.gateway.test_rate_limits import assert_rate_limited
from usage.gateway import limits
from usage.gateway.limits import Limiter
from usage.models import UsageRecord


def counter_name(key, what: str, scope: str = "k") -> str:
    ident = key.id if scope == "k" else key.account_id
    return f"{limits.PREFIX}:{scope}{ident}:{what}:{int(time.time() // limits.WINDOW)}"


def counter(limiter: Limiter, key, what: str = "t", scope: str = "k") -> int | None:
    """A counter as every process sees it (Redis, or the memory fallback); None if never counted."""
    name = counter_name(key, what, scope)
    if limiter.redis is None:
        entry = limiter.memory.get(name)
        return None if entry is None else entry[0]
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        value = client.get(name)
        return None if value is None else int(value)
    finally:
        client.close()


async def flushed(limiter: Limiter) -> None:
    """Wait for the background flush to have written what settles and expired leases gave back."""
    while limiter.flusher is not None:
        await asyncio.gather(limiter.flusher)


async def leases_returned(*limiters: Limiter) -> None:
    """Let every lease expire (its timer is what gives its slots and tokens back), then flush."""
    await asyncio.sleep(limits.LEASE_SECONDS * 1.5)
    for limiter in limiters:
        await flushed(limiter)


def counting_round_trips(limiter: Limiter) -> list[int]:
    calls = [0]
    script = limiter.admit_script

    async def counted(**kwargs):
        calls[0] += 1
        return await script(**kwargs)

    limiter.admit_script = counted
    return calls


def used(input_tokens: int, output_tokens: int) -> TokenUsage:
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)


async def limiters(redis_url: str):
    fresh_window()
    made: list[Limiter] = []

    def make() -> Limiter:
        made.append(Limiter(redis_url))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.close()


@pytest.fixture
async def new_limiter():
    """Limiters on the test Redis (one per simulated process), closed after the test; the test
    starts well inside a rate window."""
    if not settings.REDIS_URL:
        pytest.skip("shared counters and leases exist only with Redis")
    async for make in limiters(settings.REDIS_URL):
        yield make


@pytest.fixture(params=["redis", "memory"])
async def any_limiter(request):
    """As new_limiter, and once more on the memory fallback (the embedded run command, one
    process): the same semantics either way."""
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("no REDIS_URL")
    async for make in limiters(settings.REDIS_URL if request.param == "redis" else ""):
        yield make


async def admit_all(limiter: Limiter, key, sizes: list[int]) -> list[int]:
    """Admit requests of these token sizes concurrently: the sizes admitted."""
    results = await asyncio.gather(*(limiter.admit(key, tokens=n) for n in sizes), return_exceptions=True)
    assert all(r is None or isinstance(r, RateLimited) for r in results), results
    return [n for n, r in zip(sizes, results, strict=True) if r is None]


async def admit_until_refused(limiter: Limiter, key, tokens: int) -> int:
    for admitted in range(10_000):
        try:
            await limiter.admit(key, tokens=tokens)
        except RateLimited:
            return admitted
    raise AssertionError("never refused")


# --- reservation ----------------------------------------------------------------------------------


async def test_a_burst_across_two_processes_never_reserves_more_than_the_limit(new_limiter):
    # given a 10,000 TPM key and two gateway processes
    first, second = new_limiter(), new_limiter()
    key = a_key(tpm=10_000)
    # when 2 x 50 requests of 5,000 tokens arrive before any settles
    a, b = await asyncio.gather(admit_all(first, key, [5_000] * 50), admit_all(second, key, [5_000] * 50))
    # then two are admitted, and 10,000 tokens are reserved
    assert len(a) + len(b) == 2
    assert counter(first, key) == 10_000


async def test_many_small_requests_fill_the_limit_exactly_across_processes(any_limiter):
    # given 100,000 TPM, and requests of 100 tokens: leases with a token budget at first
    processes = [any_limiter()]
    if processes[0].redis is not None:
        processes.append(any_limiter())
    key = a_key(tpm=100_000)
    admitted = 0
    for _ in range(8):  # 8 rounds of 2 x 100 concurrent requests: 1,600 for room for 1,000
        rounds = await asyncio.gather(*(admit_all(limiter, key, [100] * 100) for limiter in processes))
        admitted += sum(len(r) for r in rounds)
        assert admitted * 100 <= 100_000
        assert (counter(processes[0], key) or 0) <= 100_000
    # Budgets held by one process's lease when the other was refused come back: the limit is then
    # reached exactly.
    await leases_returned(*processes)
    admitted += await admit_until_refused(processes[-1], key, 100)
    assert admitted == 1_000
    assert counter(processes[0], key) == 100_000


async def test_requests_of_mixed_sizes_never_overshoot(any_limiter):
    limiter = any_limiter()
    key = a_key(tpm=50_000)
    sizes = [37, 4_000, 1, 900, 12_000, 250] * 30
    admitted = await admit_all(limiter, key, sizes)
    await leases_returned(limiter)
    assert sum(admitted) <= 50_000
    assert counter(limiter, key) == sum(admitted)


async def test_a_refused_reservation_leaves_the_counters_unchanged(any_limiter):
    limiter = any_limiter()
    key = a_key(rpm=100, tpm=1_000)
    await limiter.admit(key, tokens=600)
    # when a request needs more than the 400 left
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(key, tokens=500)
    # then it is refused with the token triple, and neither counter moved
    error = refused.value
    assert error.limits == {"tokens": (1_000, 400, error.retry_after)}
    assert 1 <= error.retry_after <= limits.WINDOW
    assert "1000 tokens per minute" in error.message and "needs 500" in error.message
    assert (counter(limiter, key, "r"), counter(limiter, key, "t")) == (1, 600)
    # and what is left still fits
    await limiter.admit(key, tokens=400)
    assert (counter(limiter, key, "r"), counter(limiter, key, "t")) == (2, 1_000)


async def test_a_request_bigger_than_the_whole_limit_is_refused(any_limiter):
    limiter = any_limiter()
    key = a_key(tpm=1_000)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(key, tokens=1_001)
    assert "too large" in refused.value.message and "whole limit of 1000" in refused.value.message
    assert refused.value.limits == {"tokens": (1_000, 1_000, refused.value.retry_after)}
    assert counter(limiter, key) is None  # nothing reserved
    await limiter.admit(key, tokens=1_000)  # one that is exactly the limit fits


async def test_the_account_limit_is_checked_for_each_of_its_keys(any_limiter):
    limiter = any_limiter()
    first = a_key(tpm=10_000, account_tpm=3_000)
    second = SimpleNamespace(**{**vars(first), "id": first.id + 1})
    await limiter.admit(first, tokens=2_000)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(second, tokens=2_000)
    assert "account" in refused.value.message
    assert refused.value.limits == {"tokens": (3_000, 1_000, refused.value.retry_after)}
    assert counter(limiter, second) is None  # the key's own counter was not touched either
    assert counter(limiter, first, scope="a") == 2_000


# --- correction at settle -------------------------------------------------------------------------


async def test_settling_below_the_reservation_frees_room_for_the_next_request(any_limiter):
    limiter = any_limiter()
    key = a_key(tpm=1_000)
    await limiter.admit(key, tokens=900)
    with pytest.raises(RateLimited):
        await limiter.admit(key, tokens=900)
    # when the request settles having used 100 of its 900 tokens
    limiter.consume(key, used(60, 40), reserved=900)
    await flushed(limiter)
    # then only those count, and the next 900 fit
    assert counter(limiter, key) == 100
    await limiter.admit(key, tokens=900)
    assert counter(limiter, key) == 1_000


async def test_settling_above_the_reservation_counts_the_extra(any_limiter):
    limiter = any_limiter()
    key = a_key(tpm=1_000)
    await limiter.admit(key, tokens=100)
    limiter.consume(key, used(200, 500), reserved=100)  # the prompt estimate was short
    await flushed(limiter)
    assert counter(limiter, key) == 700
    with pytest.raises(RateLimited):
        await limiter.admit(key, tokens=301)
    await limiter.admit(key, tokens=300)


async def test_a_request_that_used_nothing_gives_its_whole_reservation_back(any_limiter):
    limiter = any_limiter()
    key = a_key(tpm=1_000)
    await limiter.admit(key, tokens=1_000)
    limiter.consume(key, TokenUsage(), reserved=1_000)  # e.g. the upstream failed: not billed
    await flushed(limiter)
    assert counter(limiter, key) == 0
    await limiter.admit(key, tokens=1_000)


async def test_a_reservation_from_an_ended_window_is_not_refunded_to_the_next(any_limiter, monkeypatch):
    limiter = any_limiter()
    key = a_key(tpm=1_000)
    await limiter.admit(key, tokens=900)
    await limiter.admit(key, tokens=100)
    # when the requests settle in the next minute
    later = SimpleNamespace(time=lambda: time.time() + limits.WINDOW, monotonic=time.monotonic)
    monkeypatch.setattr(limits, "time", later)
    limiter.consume(key, used(50, 50), reserved=900)  # under its reservation: nothing to count
    limiter.consume(key, used(100, 50), reserved=100)  # 50 over: counted in the new window
    await flushed(limiter)
    name = f"{limits.PREFIX}:k{key.id}:t:{int(later.time() // limits.WINDOW)}"
    assert limiter.tokens_due == {}
    if limiter.redis is None:
        assert limiter.memory[name][0] == 50
    else:
        assert int(await limiter.redis.get(name)) == 50
        await limiter.redis.delete(name)
    monkeypatch.undo()
    assert counter(limiter, key) == 1_000  # the ended window kept its reservations


# --- leases ---------------------------------------------------------------------------------------


async def test_a_busy_key_with_a_tpm_limit_keeps_its_leases_and_returns_unused_tokens(new_limiter):
    limiter = new_limiter()
    calls = counting_round_trips(limiter)
    key = a_key(rpm=10**9, tpm=10**9)
    for _ in range(20):
        assert len(await admit_all(limiter, key, [100] * 50)) == 50
    assert calls[0] < 100  # 1,000 requests
    tokens = counter(limiter, key)
    assert tokens is not None and 100_000 <= tokens <= 100_000 + limits.MAX_LEASE * 100
    # What the last lease did not use (slots and tokens) goes back once it expires.
    await leases_returned(limiter)
    assert (counter(limiter, key, "r"), counter(limiter, key, "t")) == (1_000, 100_000)


async def test_a_request_bigger_than_the_leases_budget_takes_a_new_lease(new_limiter):
    limiter = new_limiter()
    calls = counting_round_trips(limiter)
    key = a_key(tpm=10**9)
    for _ in range(10):
        await admit_all(limiter, key, [100] * 50)
    before = calls[0]
    await limiter.admit(key, tokens=100_000)  # far beyond what the current lease holds
    assert calls[0] == before + 1
    await leases_returned(limiter)
    assert counter(limiter, key) == 500 * 100 + 100_000  # the old lease's rest came back with it


async def test_a_key_without_a_tpm_limit_never_touches_token_counters(any_limiter):
    limiter = any_limiter()
    calls = counting_round_trips(limiter) if limiter.admit_script is not None else [0]
    key = a_key(rpm=100_000)
    for _ in range(10):
        assert len(await admit_all(limiter, key, [5_000] * 50)) == 50
    for _ in range(500):
        limiter.consume(key, used(3_000, 2_000), reserved=5_000)
    await leases_returned(limiter)
    assert counter(limiter, key, "t") is None
    assert counter(limiter, key, "r") == 500
    assert (limiter.tokens_due, limiter.reserved) == ({}, {})
    assert calls[0] < 50  # the leases are as large as without tokens


# --- end to end -----------------------------------------------------------------------------------

BURST = 12
FIT = 3
MAX_TOKENS = 1_000


def test_a_burst_of_large_requests_gets_exactly_what_fits_in_the_tpm_limit(gateway):
    fresh_window()
    # given requests that each reserve their prompt's estimate plus max_tokens, and a key whose TPM
    # limit holds three of them and a half
    body = json.dumps({"model": "gpt-5", "messages": MSG, "max_tokens": MAX_TOKENS}).encode()
    reservation = math.ceil(len(body) / 4) + MAX_TOKENS
    limit = FIT * reservation + reservation // 2
    ApiKey.objects.filter(account=gateway.account).update(tpm_limit=limit)
    gateway.refresh()
    key = ApiKey.objects.get(account=gateway.account)
    # and an upstream that holds every answer until all requests were admitted or refused
    gateway.upstream.script(gate="tpm", tokens={"prompt": 10, "completion": 8}, times=FIT)
    barrier = threading.Barrier(BURST)

    def call(_):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            return client.post(
                gateway.url + "/v1/chat/completions",
                content=body,
                headers={"Authorization": f"Bearer {gateway.secret}", "Content-Type": "application/json"},
            )

    # when they all arrive at once
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        futures = [pool.submit(call, i) for i in range(BURST)]
        wait_until(
            lambda: UsageRecord.objects.filter(api_key=key).count() == BURST, what="every request admitted or refused"
        )
        gateway.upstream.open_gate("tpm")
        responses = [future.result() for future in futures]

    # then exactly three are served, and the rest refused with the token triple and no upstream call
    assert sorted(r.status_code for r in responses) == [200] * FIT + [429] * (BURST - FIT)
    assert len(gateway.upstream.requests) == FIT
    for response in responses:
        if response.status_code == 429:
            assert_rate_limited(response, limit_header="x-ratelimit-limit-tokens", limit=limit)
            assert response.headers["x-ratelimit-remaining-tokens"] == str(limit - FIT * reservation)
            assert "tokens per minute" in response.json()["error"]["message"]
    # and once they settled, only the 18 tokens each actually used are counted: room again
    limiter = gateway.server.state.limiter
    wait_until(lambda: counter(limiter, key) == FIT * 18, what="the reservations corrected")
    assert (
        gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}).status_code
        == 200
    )
