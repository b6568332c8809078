"""RPM and TPM limits per key and per account (CONTRACT §2.2), shared by every gateway process.

Counters live in Redis (REDIS_URL) through the `limits` library, in fixed one-minute windows;
without Redis (the embedded run command) they live in process memory, which is only right for a
single gateway process. Requests count when they are admitted; tokens count once the request is
settled (a request is admitted while the window still has tokens left, so the last one may go
over by its own size, as with OpenAI's limits). If Redis is unreachable the limiter fails open:
the ledger still protects the money, and refusing every customer would be worse.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from billing.money import TokenUsage
from openbili.core.errors import RateLimited

log = logging.getLogger("openbili.gateway")


class Limiter:
    def __init__(self, redis_url: str) -> None:
        if redis_url:
            storage = RedisStorage("async+" + redis_url, implementation="redispy", key_prefix="openbili-limits")
        else:
            storage = MemoryStorage()
        self.strategy = FixedWindowRateLimiter(storage)
        self._warned_at = 0.0

    @staticmethod
    def scopes(key) -> list[tuple[str, int | None, int | None]]:
        return [(f"key:{key.id}", key.rpm_limit, key.tpm_limit),
                (f"account:{key.account_id}", key.account_rpm_limit, key.account_tpm_limit)]  # fmt: skip

    async def admit(self, key) -> None:
        """Count one request against the key and its account, or raise RateLimited (429)."""
        if not (key.rpm_limit or key.tpm_limit or key.account_rpm_limit or key.account_tpm_limit):
            return
        try:
            for scope, rpm, tpm in self.scopes(key):
                if rpm and not await self.strategy.hit(RateLimitItemPerMinute(rpm), "rpm", scope):
                    raise await self.refusal("requests", rpm, "rpm", scope)
                if tpm and not await self.strategy.test(RateLimitItemPerMinute(tpm), "tpm", scope):
                    raise await self.refusal("tokens", tpm, "tpm", scope)
        except RateLimited:
            raise
        except Exception as exc:
            self.fail_open(exc)

    async def consume(self, key, usage: TokenUsage) -> None:
        """Count a settled request's tokens against the key's and the account's TPM."""
        tokens = usage.input_tokens + usage.output_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        if not tokens or not (key.tpm_limit or key.account_tpm_limit):
            return
        try:
            for scope, _, tpm in self.scopes(key):
                if tpm:
                    await self.strategy.hit(RateLimitItemPerMinute(tpm), "tpm", scope, cost=tokens)
        except Exception as exc:
            self.fail_open(exc)

    async def refusal(self, what: str, limit: int, kind: str, scope: str) -> RateLimited:
        stats = await self.strategy.get_window_stats(RateLimitItemPerMinute(limit), kind, scope)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        owner = "API key" if scope.startswith("key:") else "account"
        error = RateLimited(
            f"Rate limit reached: this {owner} may send {limit} {what} per minute. Retry after {retry_after}s.",
            retry_after=retry_after,
        )
        error.limits = {what: (limit, max(stats.remaining, 0), retry_after)}
        return error

    def fail_open(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("rate limiter unavailable (%s): requests are not rate limited", type(exc).__name__)
