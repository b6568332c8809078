"""RPM and TPM limits per key and per account (CONTRACT §2.2), shared by every gateway process.

Counters live in Redis (REDIS_URL) in fixed one-minute windows; without Redis (the embedded run
command) in process memory, which is only right for a single gateway process. A Lua script checks
every limited scope (key, account) and, only if all pass, counts against them: one round trip,
atomic across processes.

Tokens are reserved when a request is admitted, not counted when it settles: a burst of large
requests all start before any of them settles, so counting at settle would admit the whole burst
however small the limit. Like OpenAI, a request reserves its prompt's estimate plus max_tokens × n
and is refused unless that fits in what is left of the window (a request larger than the whole
limit can never fit, and is told so). When it settles, the difference between its actual usage and
its reservation (often negative: max_tokens is an upper bound) is added to the counters by a
background flush, off the response path, so the room a short answer did not use goes back to the
window. A reservation made in a window that has since ended is not refunded to the new one, which
never counted it; only usage beyond it is counted there.

A busy key does not pay that round trip per request: the script can count several requests at
once (a lease), which this process then admits locally for up to LEASE_SECONDS. A lease carries
request slots and, for a key under a TPM limit, a token budget sized for as many requests as it
has slots; a request admitted locally takes one slot and its tokens from the budget, and one that
does not fit in what is left takes a new lease. A lease grows while the key's traffic uses it up
in time (doubling, up to MAX_LEASE) and never takes more than 1/LEASE_SHARE of what is left in
the window (beyond the leasing request's own share), so a key near its limit is admitted one
request at a time again, exactly. Slots and tokens a lease did not use go back to the counters
(with the next lease, or by the background flush), so leases never admit more requests or tokens
than the limit across all processes; they can only make another process wait up to LEASE_SECONDS
for what this one holds. At 1,000 req/s on one key this is ~20 round trips a second instead of
1,000 (bench/README.md). Scopes without a limit are never counted, so a key without a TPM limit
pays nothing for tokens.

If Redis is unreachable the limiter fails open (logged): the ledger still protects the money, and
refusing every customer would be worse.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from billing.money import TokenUsage
from openbili.core.errors import RateLimited
from openbili.ops.metrics import LIMITER, TALLY

log = logging.getLogger("openbili.gateway")

WINDOW = 60
FLUSH_SECONDS = 0.05
LEASE_SECONDS = 0.1
MAX_LEASE = 64
LEASE_SHARE = 8
PREFIX = "openbili-limits"

# KEYS: counter keys, a (requests, tokens) pair per scope. ARGV: their limits (0: none, never
# read or counted), then what an earlier lease gives back to each, then the window's TTL, the
# request slots wanted, this request's tokens, the tokens per further slot. Gives back, then
# refuses with {index of the refusing key, its count} (requests: count >= limit; tokens:
# count + this request's tokens > limit), or counts the granted slots on every request counter and
# the token budget (this request's tokens + per further slot) on every token counter and returns
# {0, slots, budget}. A counter a refund took below zero counts as zero.
ADMIT = """
local n = #KEYS
local ttl, want = tonumber(ARGV[2 * n + 1]), tonumber(ARGV[2 * n + 2])
local need, per = tonumber(ARGV[2 * n + 3]), tonumber(ARGV[2 * n + 4])
for i = 1, n do
    local back = tonumber(ARGV[n + i])
    if back > 0 and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], back) end
end
local grant = want
for i = 1, n do
    local limit = tonumber(ARGV[i])
    if limit > 0 then
        local count = math.max(0, tonumber(redis.call('GET', KEYS[i]) or '0'))
        if i % 2 == 1 then
            if count >= limit then return {i, count} end
            grant = math.min(grant, math.max(1, math.floor((limit - count) / SHARE)))
        else
            if count + need > limit then return {i, count} end
            if per > 0 then
                local share = math.max(need, math.floor((limit - count) / SHARE))
                grant = math.min(grant, 1 + math.floor((share - need) / per))
            end
        end
    end
end
local budget = need + (grant - 1) * per
for i = 1, n do
    local amount = grant
    if i % 2 == 0 then amount = budget end
    if tonumber(ARGV[i]) > 0 and amount > 0 then
        local count = redis.call('INCRBY', KEYS[i], string.format('%d', amount))
        if count <= amount then
            if count < amount then redis.call('SET', KEYS[i], string.format('%d', amount)) end
            redis.call('EXPIRE', KEYS[i], ttl)
        end
    end
end
return {0, grant, budget}
""".replace("SHARE", str(LEASE_SHARE))


@dataclass(slots=True)
class Lease:
    """Request slots and tokens already counted in Redis for one key, admitted locally until
    `expires`."""

    window: int
    names: list[str]  # the request counters the slots were counted on
    left: int
    expires: float  # time.monotonic()
    token_names: list[str] = field(default_factory=list)  # the token counters the budget was counted on
    tokens: int = 0  # token budget left
    peak: int = 0  # largest request admitted from it: the next lease's budget per slot
    wasted: bool = False  # expired with slots left: the next lease is smaller


class Limiter:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self.admit_script = self.redis.register_script(ADMIT) if self.redis else None
        self.memory: dict[str, tuple[int, float]] = {}  # key -> (count, expires at), no Redis only
        self.tokens_due: dict[str, int] = {}  # counter key -> tokens not yet written (may be < 0)
        self.slots_back: dict[str, int] = {}  # counter key -> unused lease slots/tokens not yet returned
        self.leases: dict[int, Lease] = {}  # API key id -> its current lease
        self.lease_size: dict[int, int] = {}  # API key id -> slots its next lease asks for
        self.leasing: dict[int, asyncio.Event] = {}  # API key id -> set when its lease call ends
        # API key id -> (window, tokens this process reserved in it for requests not yet settled):
        # tells a settle whether its reservation is still in the current window's counters.
        self.reserved: dict[int, tuple[int, int]] = {}
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
        """Count one request against the key and its account and reserve its `tokens` (prompt
        estimate + max_tokens × n) on their token counters, or raise RateLimited (429)."""
        if not (key.rpm_limit or key.tpm_limit or key.account_rpm_limit or key.account_tpm_limit):
            return
        tokens = max(tokens, 0) if key.tpm_limit or key.account_tpm_limit else 0
        if self.admit_script is None:
            self.admit_in_memory(key, tokens)
            return
        while True:
            lease = self.leases.get(key.id)
            if (
                lease is not None
                and lease.left > 0
                and lease.tokens >= tokens
                and time.monotonic() < lease.expires
                and lease.window == int(time.time() // WINDOW)
            ):
                lease.left -= 1
                if tokens:
                    lease.tokens -= tokens
                    lease.peak = max(lease.peak, tokens)
                    self.note_reserved(key.id, lease.window, tokens)
                TALLY.count(LIMITER, ("admitted_lease",))
                return
            running = self.leasing.get(key.id)
            if running is None:
                break
            await running.wait()  # another request of this key is taking a lease: share it
        done = self.leasing[key.id] = asyncio.Event()
        try:
            await self.take_lease(key, tokens)
        finally:
            del self.leasing[key.id]
            done.set()

    async def take_lease(self, key, tokens: int) -> None:
        """One round trip: give back the previous lease's unused slots and tokens, take a new lease
        (this request's slot and tokens plus those local traffic is expected to use), or raise
        RateLimited."""
        now = time.time()
        window = int(now // WINDOW)
        counters = self.counters(key, window)
        names = [name for name, _, _, _ in counters]
        size, back, per = self.lease_size.get(key.id, 1), {}, tokens
        previous = self.leases.pop(key.id, None)
        if previous is not None:
            if previous.window == window:
                back = dict.fromkeys(previous.names, previous.left)
                back |= dict.fromkeys(previous.token_names, previous.tokens)
            if previous.left or previous.wasted:
                size = max(1, size // 2)
            elif time.monotonic() < previous.expires:
                size = min(size * 2, MAX_LEASE)  # used up in time: this key is busy here
            per = max(tokens, previous.peak)  # budget for this key's largest recent request
            previous.left = previous.tokens = 0
        self.lease_size[key.id] = size
        for name in set(back) - set(names):  # the key's limits changed: not the script's to return
            self.slots_back[name] = self.slots_back.get(name, 0) + back.pop(name)
        if self.slots_back:
            self.start_flusher()
        limits = [limit for _, limit, _, _ in counters]
        assert self.admit_script is not None  # admit() went to admit_in_memory otherwise
        args = [*limits, *(back.get(name, 0) for name in names), WINDOW + 1, size, tokens, per]
        try:
            refused, *granted = await self.admit_script(keys=names, args=args)
        except Exception as exc:
            TALLY.count(LIMITER, ("failed_open",))
            self.fail_open(exc)
            return
        if refused:
            TALLY.count(LIMITER, ("refused",))
            raise self.refusal(counters, refused, granted[0], now, tokens)
        TALLY.count(LIMITER, ("admitted",))
        slots, budget = granted
        lease = Lease(
            window,
            [name for name, limit, what, _ in counters if limit and what == "requests"],
            left=slots - 1,
            expires=time.monotonic() + LEASE_SECONDS,
            token_names=[name for name, limit, what, _ in counters if limit and what == "tokens"],
            tokens=budget - tokens,
            peak=tokens or per,
        )
        self.note_reserved(key.id, window, tokens)
        if len(self.leases) > 10_000:  # forget the leases of keys gone quiet
            now_mono = time.monotonic()
            self.leases = {k: v for k, v in self.leases.items() if v.expires > now_mono - WINDOW}
            self.lease_size = {k: v for k, v in self.lease_size.items() if k in self.leases}
        self.leases[key.id] = lease  # kept even when empty: how fast it was used sizes the next
        if lease.left or lease.tokens:
            asyncio.get_running_loop().call_later(LEASE_SECONDS, self.expire_lease, key.id, lease)

    def expire_lease(self, key_id: int, lease: Lease) -> None:
        """A lease outlived LEASE_SECONDS with slots or tokens left: hand them back to the shared
        counters (by the next flush), so other processes can use them this window."""
        if (lease.left <= 0 and lease.tokens <= 0) or self.leases.get(key_id) is not lease:
            return
        if lease.window == int(time.time() // WINDOW):
            for names, amount in ((lease.names, lease.left), (lease.token_names, lease.tokens)):
                for name in names if amount > 0 else ():
                    self.slots_back[name] = self.slots_back.get(name, 0) + amount
            self.start_flusher()
        lease.wasted = lease.left > 0
        lease.left = lease.tokens = 0

    def note_reserved(self, key_id: int, window: int, tokens: int) -> None:
        if not tokens:
            return
        reserved_window, reserved = self.reserved.get(key_id, (window, 0))
        self.reserved[key_id] = (window, tokens + (reserved if reserved_window == window else 0))
        if len(self.reserved) > 10_000:  # forget the windows that ended
            self.reserved = {k: v for k, v in self.reserved.items() if v[0] == window}

    @staticmethod
    def refusal(counters, refused: int, count: int, now: float, tokens: int = 0) -> RateLimited:
        _, limit, what, owner = counters[refused - 1]
        retry_after = max(1, math.ceil(WINDOW - now % WINDOW))
        remaining = max(limit - int(count), 0)
        if what == "tokens" and tokens > limit:
            message = (
                f"Request too large: it needs {tokens} tokens (its prompt plus max_tokens × n), more than "
                f"this {owner}'s whole limit of {limit} tokens per minute. Lower max_tokens or the prompt."
            )
        elif what == "tokens":
            message = (
                f"Rate limit reached: this {owner} may use {limit} tokens per minute; this request needs "
                f"{tokens} (its prompt plus max_tokens × n) and {remaining} are left. Retry after {retry_after}s."
            )
        else:
            message = f"Rate limit reached: this {owner} may send {limit} {what} per minute."
            message += f" Retry after {retry_after}s."
        error = RateLimited(message, retry_after=retry_after)
        error.limits = {what: (limit, remaining, retry_after)}
        return error

    def admit_in_memory(self, key, tokens: int = 0) -> None:
        now = time.time()
        window = int(now // WINDOW)
        counters = self.counters(key, window)
        limits = [limit for _, limit, _, _ in counters]
        refused, count = self.memory_admit([name for name, _, _, _ in counters], limits, now, tokens)
        if refused:
            TALLY.count(LIMITER, ("refused",))
            raise self.refusal(counters, refused, count, now, tokens)
        TALLY.count(LIMITER, ("admitted",))
        self.note_reserved(key.id, window, tokens)

    def consume(self, key, usage: TokenUsage, reserved: int = 0) -> None:
        """Correct a settled request's token reservation to its actual usage (actual − reserved,
        often negative): added up in memory and written to the shared counters by one pipeline
        every FLUSH_SECONDS, off the response's path (at 600 req/s, a dozen round trips a second
        instead of 600)."""
        if not (key.tpm_limit or key.account_tpm_limit):
            return
        tokens = usage.input_tokens + usage.output_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        window = int(time.time() // WINDOW)
        reserved_window, outstanding = self.reserved.get(key.id, (window, 0))
        if reserved > 0 and reserved_window == window and outstanding >= reserved:
            delta = tokens - reserved  # the reservation is in this window's counters: correct it
            if outstanding > reserved:
                self.reserved[key.id] = (window, outstanding - reserved)
            else:
                del self.reserved[key.id]
        else:
            # Reserved in a window that has ended (or never counted: Redis was down): that window
            # kept it, and this one only counts what went beyond it.
            delta = max(tokens - max(reserved, 0), 0)
        if not delta:
            return
        for name, limit, what, _ in self.counters(key, window):
            if what == "tokens" and limit:
                self.tokens_due[name] = self.tokens_due.get(name, 0) + delta
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
                for name, amount in back.items():
                    pipe.decrby(name, amount)
                    pipe.expire(name, WINDOW + 1)
                await pipe.execute()
        except Exception as exc:
            self.fail_open(exc)

    def memory_admit(self, names: list[str], limits: list[int], now: float, tokens: int = 0) -> tuple[int, int]:
        """admit()'s Lua script without Redis, for a single process and without leases: names
        and limits as the script's, one request slot and `tokens` on every limited counter."""
        counts = []
        for index, name in enumerate(names):
            count, expires = self.memory.get(name, (0, 0.0))
            count = max(count, 0) if expires > now else 0  # a refund below zero counts as zero
            counts.append(count)
            limit = limits[index]
            if limit and (count >= limit if index % 2 == 0 else count + tokens > limit):
                return index + 1, count
        for index, name in enumerate(names):
            amount = 1 if index % 2 == 0 else tokens
            if limits[index] and amount:
                self.memory[name] = (counts[index] + amount, now + WINDOW + 1)
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
