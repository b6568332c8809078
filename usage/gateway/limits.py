"""RPM and TPM limits per key and per account (CONTRACT §2.2), shared by every gateway process.

Counters live in Redis (REDIS_URL) in fixed one-minute windows; without Redis (the embedded run
command) in process memory, which is only right for a single gateway process. A Lua script checks
every limited scope (key, account) and, only if all pass, counts requests against them: one
round trip, atomic across processes.

A busy key does not pay that round trip per request: the script can count several requests at
once (a lease), which this process then admits locally for up to LEASE_SECONDS. A lease grows
while the key's traffic uses it up in time (doubling, up to MAX_LEASE) and never takes more than
1/LEASE_SHARE of what is left in the window, so a key near its limit is admitted one request at a
time again, exactly. Slots a lease did not use go back to the counters (with the next lease, or by
the background flush), so leases never admit more than the limit across all processes; they can
only make another process wait up to LEASE_SECONDS for slots this one holds. At 1,000 req/s on one
key this is ~20 round trips a second instead of 1,000 (bench/README.md).

Tokens are counted when the request settles, in batches off the response path; a request is
admitted while the window still has tokens left (as seen by the last lease), so the last requests
may go over by their own size, as with OpenAI's limits. If Redis is unreachable the limiter fails
open (logged): the ledger still protects the money, and refusing every customer would be worse.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from billing.money import TokenUsage
from openbili.core.errors import RateLimited

log = logging.getLogger("openbili.gateway")

WINDOW = 60
FLUSH_SECONDS = 0.05
LEASE_SECONDS = 0.1
MAX_LEASE = 64
LEASE_SHARE = 8
PREFIX = "openbili-limits"

# KEYS: counter keys, a (requests, tokens) pair per scope. ARGV: their limits, then the window's
# TTL, the request slots wanted, the slots of an earlier lease given back. Gives the slots back,
# then refuses with {index of the refusing key, its count} or counts the granted slots on every
# request counter and returns {0, granted}.
ADMIT = """
local n = #KEYS
local ttl, want, back = tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2]), tonumber(ARGV[n + 3])
if back > 0 then
    for i = 1, n, 2 do
        if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], back) end
    end
end
local grant = want
for i = 1, n do
    local count = tonumber(redis.call('GET', KEYS[i]) or '0')
    local limit = tonumber(ARGV[i])
    if count >= limit then return {i, count} end
    if i % 2 == 1 then
        local share = math.max(1, math.floor((limit - count) / SHARE))
        if share < grant then grant = share end
    end
end
for i = 1, n, 2 do
    if redis.call('INCRBY', KEYS[i], grant) == grant then redis.call('EXPIRE', KEYS[i], ttl) end
end
return {0, grant}
""".replace("SHARE", str(LEASE_SHARE))


@dataclass(slots=True)
class Lease:
    """Request slots already counted in Redis for one key, admitted locally until `expires`."""

    window: int
    names: list[str]  # the request counters the slots were counted on
    left: int
    expires: float  # time.monotonic()
    wasted: bool = False  # expired with slots left: the next lease is smaller


class Limiter:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self.admit_script = self.redis.register_script(ADMIT) if self.redis else None
        self.memory: dict[str, tuple[int, float]] = {}  # key -> (count, expires at), no Redis only
        self.tokens_due: dict[str, int] = {}  # counter key -> tokens not yet written
        self.slots_back: dict[str, int] = {}  # counter key -> unused lease slots not yet returned
        self.leases: dict[int, Lease] = {}  # API key id -> its current lease
        self.lease_size: dict[int, int] = {}  # API key id -> slots its next lease asks for
        self.leasing: dict[int, asyncio.Event] = {}  # API key id -> set when its lease call ends
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

    async def admit(self, key, tokens: int = 0) -> None:
        """Count one request against the key and its account, or raise RateLimited (429)."""
        if not (key.rpm_limit or key.tpm_limit or key.account_rpm_limit or key.account_tpm_limit):
            return
        if self.admit_script is None:
            self.admit_in_memory(key)
            return
        while True:
            lease = self.leases.get(key.id)
            if (
                lease is not None
                and lease.left > 0
                and time.monotonic() < lease.expires
                and lease.window == int(time.time() // WINDOW)
            ):
                lease.left -= 1
                return
            running = self.leasing.get(key.id)
            if running is None:
                break
            await running.wait()  # another request of this key is taking a lease: share it
        done = self.leasing[key.id] = asyncio.Event()
        try:
            await self.take_lease(key)
        finally:
            del self.leasing[key.id]
            done.set()

    async def take_lease(self, key) -> None:
        """One round trip: give back the previous lease's unused slots, take a new lease (this
        request's slot plus the ones local traffic is expected to use), or raise RateLimited."""
        now = time.time()
        window = int(now // WINDOW)
        counters = self.counters(key, window)
        names = [name for name, _, _, _ in counters]
        size, back = self.lease_size.get(key.id, 1), 0
        previous = self.leases.pop(key.id, None)
        if previous is not None:
            if previous.window == window:
                back = previous.left
            if previous.left or previous.wasted:
                size = max(1, size // 2)
            elif time.monotonic() < previous.expires:
                size = min(size * 2, MAX_LEASE)  # used up in time: this key is busy here
            previous.left = 0
        self.lease_size[key.id] = size
        # A zero limit means "none": give the script a limit it can never reach.
        limits = [limit or 2**62 for _, limit, _, _ in counters]
        assert self.admit_script is not None  # admit() went to admit_in_memory otherwise
        try:
            refused, count = await self.admit_script(keys=names, args=[*limits, WINDOW + 1, size, back])
        except Exception as exc:
            self.fail_open(exc)
            return
        if refused:
            raise self.refusal(counters, refused, count, now)
        lease = Lease(window, names[::2], left=count - 1, expires=time.monotonic() + LEASE_SECONDS)
        if len(self.leases) > 10_000:  # forget the leases of keys gone quiet
            now_mono = time.monotonic()
            self.leases = {k: v for k, v in self.leases.items() if v.expires > now_mono - WINDOW}
            self.lease_size = {k: v for k, v in self.lease_size.items() if k in self.leases}
        self.leases[key.id] = lease  # kept even when empty: how fast it was used sizes the next
        if lease.left:
            asyncio.get_running_loop().call_later(LEASE_SECONDS, self.expire_lease, key.id, lease)

    def expire_lease(self, key_id: int, lease: Lease) -> None:
        """A lease outlived LEASE_SECONDS with slots left: hand them back to the shared counters
        (by the next flush), so other processes can use them this window."""
        if lease.left <= 0 or self.leases.get(key_id) is not lease:
            return
        if lease.window == int(time.time() // WINDOW):
            for name in lease.names:
                self.slots_back[name] = self.slots_back.get(name, 0) + lease.left
            self.start_flusher()
        lease.left, lease.wasted = 0, True

    @staticmethod
    def refusal(counters, refused: int, count: int, now: float) -> RateLimited:
        _, limit, what, owner = counters[refused - 1]
        retry_after = max(1, math.ceil(WINDOW - now % WINDOW))
        error = RateLimited(
            f"Rate limit reached: this {owner} may send {limit} {what} per minute. Retry after {retry_after}s.",
            retry_after=retry_after,
        )
        error.limits = {what: (limit, max(limit - int(count), 0), retry_after)}
        return error

    def admit_in_memory(self, key) -> None:
        now = time.time()
        counters = self.counters(key, int(now // WINDOW))
        limits = [limit or 2**62 for _, limit, _, _ in counters]
        refused, count = self.memory_admit([name for name, _, _, _ in counters], limits, now)
        if refused:
            raise self.refusal(counters, refused, count, now)

    def consume(self, key, usage: TokenUsage, reserved: int = 0) -> None:
        """Count a settled request's tokens: added up in memory and written to the shared counters
        by one pipeline every FLUSH_SECONDS, off the response's path (at 600 req/s, a dozen round
        trips a second instead of 600)."""
        tokens = usage.input_tokens + usage.output_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        if not tokens or not (key.tpm_limit or key.account_tpm_limit):
            return
        for name, _, what, _ in self.counters(key, int(time.time() // WINDOW)):
            if what == "tokens":
                self.tokens_due[name] = self.tokens_due.get(name, 0) + tokens
        self.start_flusher()

    def start_flusher(self) -> None:
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.tokens_due or self.slots_back:
                await asyncio.sleep(FLUSH_SECONDS)
                due, self.tokens_due = self.tokens_due, {}
                back, self.slots_back = self.slots_back, {}
                await self._add(due, back)
        finally:
            self.flusher = None  # no await since the loop's last check: nothing can be missed

    async def _add(self, due: dict[str, int], back: dict[str, int]) -> None:
        try:
            if self.redis is None:
                for name, tokens in due.items():
                    count, expires = self.memory.get(name, (0, time.time() + WINDOW + 1))
                    self.memory[name] = (count + tokens, expires)
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, tokens in due.items():
                    pipe.incrby(name, tokens)
                    pipe.expire(name, WINDOW + 1)
                for name, slots in back.items():
                    pipe.decrby(name, slots)
                    pipe.expire(name, WINDOW + 1)
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
