"""Per-process gateway state: the async database pool, the upstream HTTP client and in-memory
caches of keys and the catalog.

Gateway processes stay stateless: everything here is a cache of PostgreSQL, invalidated by the
`openbili_cache` NOTIFY triggers (billing migration 0003) and, as a safety net, by a TTL.
Cache misses load through the ORM selectors in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import psycopg
from django.conf import settings
from django.db import close_old_connections, connections
from psycopg_pool import AsyncConnectionPool

from billing import keys as key_format
from billing.money import Prices
from usage.gateway import batch
from usage.gateway.limits import Limiter

log = logging.getLogger("openbili.gateway")

KEY_TTL = float(os.environ.get("OPENBILI_KEY_CACHE_SECONDS", "60"))
UNKNOWN_KEY_TTL = 5.0
CATALOG_TTL = float(os.environ.get("OPENBILI_CATALOG_CACHE_SECONDS", "30"))


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    account_id: int
    prefix: str
    active: bool
    expires_at: datetime | None
    account_active: bool
    all_models: bool
    allowed_models: frozenset[str]
    rpm_limit: int | None
    tpm_limit: int | None
    account_rpm_limit: int | None
    account_tpm_limit: int | None

    def usable(self, now: datetime) -> bool:
        return self.active and self.account_active and (self.expires_at is None or self.expires_at > now)

    def allows(self, model: str) -> bool:
        return self.all_models or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class RouteInfo:
    id: int
    provider: str
    base_url: str
    upstream_model: str
    secret: str = field(repr=False)
    timeout: float


@dataclass(frozen=True, slots=True)
class PriceInfo:
    effective_from: datetime
    snapshot_id: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    kind: str
    owned_by: str
    created: int
    context_window: int
    max_output_tokens: int
    visible: bool
    routes: tuple[RouteInfo, ...]
    prices: tuple[PriceInfo, ...]  # newest first, future versions included

    def price_at(self, now: datetime) -> PriceInfo | None:
        for price in self.prices:
            if price.effective_from <= now:
                return price
        return None


def _load_key(key_hash: str) -> KeyInfo | None:
    from billing.models import ApiKey

    try:
        key = ApiKey.objects.select_related("account").filter(key_hash=key_hash).first()
    finally:
        connections.close_all()
    if key is None:
        return None
    return KeyInfo(
        id=key.pk,
        account_id=key.account_id,
        prefix=key.prefix,
        active=key.status == ApiKey.Status.ACTIVE,
        expires_at=key.expires_at,
        account_active=key.account.status == key.account.Status.ACTIVE,
        all_models=key.all_models,
        allowed_models=frozenset(key.allowed_models),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        account_rpm_limit=key.account.rpm_limit,
        account_tpm_limit=key.account.tpm_limit,
    )


def _load_catalog() -> dict[str, ModelInfo]:
    from billing import selectors, services
    from billing.models import PriceVersion

    close_old_connections()
    try:
        entries = selectors.catalog_entries()
        future: dict[int, list[PriceVersion]] = {}
        for version in PriceVersion.objects.filter(effective_from__gt=datetime.now().astimezone()).order_by(
            "-effective_from"
        ):
            future.setdefault(version.model_id, []).append(version)
        catalog = {}
        for entry in entries:
            versions = [*future.get(entry.model.pk, []), *([entry.price] if entry.price else [])]
            prices = []
            for version in versions:
                version.model = entry.model
                snapshot = services.price_snapshot_for(version)
                prices.append(PriceInfo(version.effective_from, snapshot.pk, version.prices()))
            routes = []
            for route in entry.usable_routes:
                try:
                    secret = services.route_secret(route)
                except Exception:  # an undecryptable secret hides the route, never crashes the gateway
                    log.warning("route %s: secret unreadable, route skipped", route.pk)
                    continue
                routes.append(
                    RouteInfo(
                        route.pk,
                        route.provider,
                        route.base_url,
                        route.upstream_model,
                        secret,
                        float(route.timeout_seconds),
                    )
                )
            model = entry.model
            catalog[model.name] = ModelInfo(
                name=model.name,
                kind=model.kind,
                owned_by=model.owned_by or "openbili",
                created=int(model.created_at.timestamp()),
                context_window=model.context_window,
                max_output_tokens=model.max_output_tokens,
                visible=entry.visible and bool(routes),
                routes=tuple(routes),
                prices=tuple(prices),
            )
        return catalog
    finally:
        connections.close_all()


def conninfo() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=str(db["PORT"]) if db.get("PORT") else None,
        application_name="openbili-gateway",
    )


class GatewayState:
    def __init__(self) -> None:
        self.pool: AsyncConnectionPool | None = None
        self.http: aiohttp.ClientSession | None = None
        self.limiter: Limiter | None = None
        self.reserves: batch.Batcher | None = None
        self.settles: batch.Batcher | None = None
        self._keys: dict[str, tuple[float, KeyInfo | None]] = {}
        self._catalog: dict[str, ModelInfo] = {}
        self._catalog_at = 0.0
        self._catalog_lock = asyncio.Lock()
        self._generation = 0  # bumped by every invalidation, so a load racing one is not kept
        self._listener: asyncio.Task | None = None
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.pool = AsyncConnectionPool(
            conninfo(),
            min_size=1,
            # Small on purpose: requests queue here, in the event loop, and go to PostgreSQL in
            # batches (batch.py: one reserve and one settle statement in flight per pair of
            # connections), rather than as backends waiting on each other's row locks. 2 was best
            # on the 2-core bench machine, for one account and for 32 (bench/README.md); a larger
            # database server may take more.
            max_size=int(os.environ.get("OPENBILI_GATEWAY_DB_POOL", "2")),
            # The pool runs only the gateway's point statements (batch.py, sql.py). A batch's rows
            # come from jsonb_to_recordset, which the planner always guesses at 100 rows, so on
            # small tables it would hash-join them against a sequential scan of the usage rows
            # (2 ms instead of 0.2). Index lookups are always the right plan here: say so.
            kwargs={
                "autocommit": True,
                "options": "-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off",
            },
            open=False,
        )
        await self.pool.open()
        pool = self.pool
        # One reserve and one settle statement per shard of accounts in flight: half the pool each.
        shards = max(1, pool.max_size // 2)
        self.reserves = batch.Batcher(lambda items: batch.reserve(pool, items), name="reserve", shards=shards)
        self.settles = batch.Batcher(lambda items: batch.settle(pool, items), name="settle", shards=shards)
        self.limiter = Limiter(settings.REDIS_URL)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300),
            # Bytes as sent, for pass-through; compressed answers are decoded by content_coding.py,
            # and upstreams are asked not to compress (aiohttp would advertise gzip by default).
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            headers={"Accept-Encoding": "identity"},
        )
        self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
        for batcher in (self.reserves, self.settles):
            if batcher:
                await batcher.drain()
        if self.limiter:
            await self.limiter.close()
        if self.http:
            await self.http.close()
        if self.pool:
            await self.pool.close()
        self._started = False

    def invalidate(self, what: str = "all") -> None:
        self._generation += 1
        if what in ("keys", "all"):
            self._keys = {}
        if what in ("catalog", "all"):
            self._catalog_at = 0.0

    async def _listen(self) -> None:
        """Clear caches on NOTIFY openbili_cache; reconnect with back-off if the connection drops."""
        delay = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
                    await conn.execute("LISTEN openbili_cache")
                    self.invalidate()  # anything may have changed while we were not listening
                    delay = 1.0
                    async for notify in conn.notifies():
                        self.invalidate(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving from TTL-bounded caches meanwhile
                log.warning("cache listener: %s; reconnecting in %.0fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def key(self, secret: str) -> KeyInfo | None:
        if not key_format.key_well_formed(secret):
            return None
        key_hash = key_format.key_hash(secret)
        now = time.monotonic()
        cached = self._keys.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        generation = self._generation
        info = await asyncio.to_thread(_load_key, key_hash)
        if generation == self._generation:
            self._keys[key_hash] = (now + (KEY_TTL if info else UNKNOWN_KEY_TTL), info)
        return info

    async def catalog(self) -> dict[str, ModelInfo]:
        if time.monotonic() - self._catalog_at < CATALOG_TTL:
            return self._catalog
        async with self._catalog_lock:
            if time.monotonic() - self._catalog_at >= CATALOG_TTL:
                stamp, generation = time.monotonic(), self._generation
                self._catalog = await asyncio.to_thread(_load_catalog)
                self._catalog_at = stamp if generation == self._generation else 0.0
        return self._catalog
