"""RPM and TPM limits per key and per account (CONTRACT §2.2), shared by every gateway process.

Counters live in Redis (REDIS_URL) in fixed one-minute windows; without Redis (the embedded run
command) in process memory, which is only right for a single gateway process. A request is
admitted by ONE round trip: a Lua script checks every limited scope (key, account) and, only if
all pass, counts the request (the `limits` library needed one round trip per check and scope,
which cost ~0.2 ms CPU per request in bench/). Tokens are counted when the request settles, in
batches off the response path; a request is admitted while the window still has tokens left, so
the last one may go over by its own size, as with OpenAI's limits. If Redis is unreachable the
limiter fails open (logged): the ledger still protects the money, and refusing every customer
would be worse.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import redis.asyncio as aioredis

from billing.money import TokenUsage
from openbili.core.errors import RateLimited

log = logging.getLogger("openbili.gateway")

WINDOW = 60
FLUSH_SECONDS = 0.05
PREFIX = "openbili-limits"

# KEYS: counter keys; ARGV: their limits, then the window's TTL. Odd keys count requests, even
# keys count tokens. Returns 0 when admitted (requests counted), else the index of the refusing
# key and its count.
ADMIT = """
for i = 1, #KEYS do
    local count = tonumber(redis.call('GET', KEYS[i]) or '0')
    if count >= tonumber(ARGV[i]) then return {i, count} end
end
for i = 1, #KEYS, 2 do
    if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[#KEYS + 1]) end
end
return {0, 0}
"""


class Limiter:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self.admit_script = self.redis.register_script(ADMIT) if self.redis else None
        self.memory: dict[str, tuple[int, float]] = {}  # key -> (count, expires at), no Redis only
        self.tokens_due: dict[str, int] = {}  # counter key -> tokens not yet written
        self.flusher: asyncio.Task | None = None
        self._warned_at = 0.0

    @staticmethod
    def counters(key, window: int) -> list[tuple[str, int, str, str]]:
        """(counter key, limit, 'requests' | 'tokens', owner) for every limit the key is under.

        Requests and tokens of a scope are listed as a pair (request counter first), with a zero
        limit standing for "no limit", so the Lua script can tell them apart by position.
        """
        out = []
        for owner, ident, rpm, tpm in (("API key", f"k{key.id}", key.rpm_limit, key.tpm_limit),
                                       ("account", f"a{key.account_id}", key.account_rpm_limit,
                                        key.account_tpm_limit)):  # fmt: skip
            if rpm or tpm:
                out.append((f"{PREFIX}:{ident}:r:{window}", rpm or 0, "requests", owner))
                out.append((f"{PREFIX}:{ident}:t:{window}", tpm or 0, "tokens", owner))
        return out

    async def admit(self, key) -> None:
        """Count one request against the key and its account, or raise RateLimited (429)."""
        if not (key.rpm_limit or key.tpm_limit or key.account_rpm_limit or key.account_tpm_limit):
            return
        now = time.time()
        counters = self.counters(key, int(now // WINDOW))
        # A zero limit means "none": give the script a limit it can never reach.
        limits = [limit or 2**62 for _, limit, _, _ in counters]
        try:
            if self.admit_script is not None:
                refused, count = await self.admit_script(
                    keys=[name for name, _, _, _ in counters], args=[*limits, WINDOW + 1]
                )
            else:
                refused, count = self.memory_admit([name for name, _, _, _ in counters], limits, now)
        except Exception as exc:
            self.fail_open(exc)
            return
        if refused:
            _, limit, what, owner = counters[refused - 1]
            retry_after = max(1, math.ceil(WINDOW - now % WINDOW))
            error = RateLimited(
                f"Rate limit reached: this {owner} may send {limit} {what} per minute. Retry after {retry_after}s.",
                retry_after=retry_after,
            )
            error.limits = {what: (limit, max(limit - int(count), 0), retry_after)}
            raise error

    def consume(self, key, usage: TokenUsage) -> None:
        """Count a settled request's tokens: added up in memory and written to the shared counters
        by one pipeline every FLUSH_SECONDS, off the response's path (at 600 req/s, a dozen round
        trips a second instead of 600)."""
        tokens = usage.input_tokens + usage.output_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        if not tokens or not (key.tpm_limit or key.account_tpm_limit):
            return
        for name, _, what, _ in self.counters(key, int(time.time() // WINDOW)):
            if what == "tokens":
                self.tokens_due[name] = self.tokens_due.get(name, 0) + tokens
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.tokens_due:
                await asyncio.sleep(FLUSH_SECONDS)
                due, self.tokens_due = self.tokens_due, {}
                await self._add(due)
        finally:
            self.flusher = None  # no await since the loop's last check: no consume can be missed

    async def _add(self, due: dict[str, int]) -> None:
        try:
            if self.redis is None:
                for name, tokens in due.items():
                    count, expires = self.memory.get(name, (0, time.time() + WINDOW + 1))
                    self.memory[name] = (count + tokens, expires)
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, tokens in due.items():
                    pipe.incrby(name, tokens).expire(name, WINDOW + 1)
                await pipe.execute()
        except Exception as exc:
            self.fail_open(exc)

    def memory_admit(self, names: list[str], limits: list[int], now: float) -> tuple[int, int]:
        counts = []
        for index, name in enumerate(names):
            count, expires = self.memory.get(name, (0, 0.0))
            if expires <= now:
                count = 0
            counts.append(count)
            if count >= limits[index]:
                return index + 1, count
        for index in range(0, len(names), 2):
            self.memory[names[index]] = (counts[index] + 1, now + WINDOW + 1)
        if len(self.memory) > 100_000:  # forget expired windows
            self.memory = {name: entry for name, entry in self.memory.items() if entry[1] > now}
        return 0, 0

    def fail_open(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("rate limiter unavailable (%s): requests are not rate limited", type(exc).__name__)

    async def close(self) -> None:
        if self.flusher is not None:
            await asyncio.gather(self.flusher, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
