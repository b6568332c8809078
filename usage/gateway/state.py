"""Per-process gateway state: the async database pool, the upstream HTTP client and in-memory
caches of keys and the catalog.

Gateway processes stay stateless: everything here is a cache of PostgreSQL, invalidated by the
`openbili_cache` NOTIFY triggers (billing migration 0003) and, as a safety net, by a TTL.
Cache misses load through the ORM selectors in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import psycopg
from django.conf import settings
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError
from django.db import close_old_connections, connections
from psycopg_pool import AsyncConnectionPool, PoolClosed

from billing import keys as key_format
from billing.money import Prices
from openbili.core.errors import PlatformUnavailable
from openbili.ops import metrics
from usage.gateway import batch, sql
from usage.gateway.limits import Limiter
from usage.gateway.outbox import UNREACHABLE, Outbox

log = logging.getLogger("openbili.gateway")

KEY_TTL = float(os.environ.get("OPENBILI_KEY_CACHE_SECONDS", "60"))
UNKNOWN_KEY_TTL = 5.0
CATALOG_TTL = float(os.environ.get("OPENBILI_CATALOG_CACHE_SECONDS", "30"))
# While PostgreSQL is away: how long a statement waits for a pooled connection before the request
# is answered 503, and how often a fresh connection is tried.
DB_WAIT_SECONDS = float(os.environ.get("OPENBILI_DB_WAIT_SECONDS", "2"))
DB_RETRY_SECONDS = 0.25
# The pool runs only the gateway's point statements (batch.py, sql.py). A batch's rows come from
# jsonb_to_recordset, which the planner always guesses at 100 rows, so on small tables it would
# hash-join them against a sequential scan of the usage rows (2 ms instead of 0.2). Index lookups
# are always the right plan here: say so. No JIT: a point statement never gains from it, and a
# plan costed past these bans would be compiled (~100 ms a statement). Generic plans always:
# the usage table is partitioned by month (usage migration 0010), and a generic plan, which counts
# every partition in its cost, never looks cheaper to PostgreSQL than a plan made for one month, so
# it would plan the settle anew on every request (+1 ms); the generic plan prunes to the row's
# month when it starts (bench/usage_partitions.py).
POOL_OPTIONS = (
    "-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off"
    " -c plan_cache_mode=force_generic_plan"
)
OUTBOX_POLL_SECONDS = 5.0


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
        connect_timeout=str(max(1, int(DB_WAIT_SECONDS))),
    )


class GatewayState:
    def __init__(self) -> None:
        self.pool: AsyncConnectionPool | None = None
        self.http: aiohttp.ClientSession | None = None
        self.limiter: Limiter | None = None
        self.reserves: batch.Batcher | None = None
        self.settles: batch.Batcher | None = None
        self.marks: batch.Batcher | None = None
        self._keys: dict[str, tuple[float, KeyInfo | None]] = {}
        self._catalog: dict[str, ModelInfo] = {}
        self._catalog_at = 0.0
        self._catalog_lock = asyncio.Lock()
        self._generation = 0  # bumped by every invalidation, so a load racing one is not kept
        self._listener: asyncio.Task | None = None
        self._drainer: asyncio.Task | None = None
        self._recovery: asyncio.Task | None = None
        self._metrics: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.outbox: Outbox | None = None
        self.outbox_wake = asyncio.Event()  # replaced in start(), on the serving loop
        self.db_down_since: float | None = None  # monotonic time the database was found unreachable
        self.dsn: str | None = None  # the pool's database, when not settings' (tests: through a proxy)
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.pool = self._new_pool()
        await self.pool.open()
        shards = max(1, self.pool.max_size // 2)
        # One reserve and one settle statement per shard of accounts in flight: half the pool each.
        # They read self.pool at each call: the pool is replaced when the database returns.
        self.reserves = batch.Batcher(lambda items: self.on_db(batch.reserve, items), name="reserve", shards=shards)
        self.settles = batch.Batcher(lambda items: self.on_db(batch.settle, items), name="settle", shards=shards)
        self.marks = batch.Batcher(lambda items: self.on_db(batch.mark_streaming, items), name="mark")
        self.limiter = Limiter(settings.REDIS_URL)
        self.outbox = Outbox(settings.REDIS_URL)
        self.outbox_wake = asyncio.Event()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300),
            # Bytes as sent, for pass-through; compressed answers are decoded by content_coding.py,
            # and upstreams are asked not to compress (aiohttp would advertise gzip by default).
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            headers={"Accept-Encoding": "identity"},
        )
        self._listener = asyncio.create_task(self._listen())
        self._drainer = asyncio.create_task(self._drain_outbox())
        self._metrics = asyncio.create_task(self._flush_metrics())

    def _new_pool(self) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            self.dsn or conninfo(),
            min_size=1,
            # Small on purpose: requests queue here, in the event loop, and go to PostgreSQL in
            # batches (batch.py: one reserve and one settle statement in flight per pair of
            # connections), rather than as backends waiting on each other's row locks. 2 was best
            # on the 2-core bench machine, for one account and for 32 (bench/README.md); a larger
            # database server may take more.
            max_size=int(os.environ.get("OPENBILI_GATEWAY_DB_POOL", "2")),
            # A statement waits this long for a connection, then fails (503 platform_error): while
            # the database is away requests fail fast instead of queueing for the pool's 30 s.
            timeout=DB_WAIT_SECONDS,
            kwargs={"autocommit": True, "options": POOL_OPTIONS},
            open=False,
        )

    async def stop(self) -> None:
        for task in (self._listener, self._drainer, self._recovery, self._metrics):
            if task:
                task.cancel()
        metrics.TALLY.flush()
        for batcher in (self.reserves, self.settles, self.marks):
            if batcher:
                await batcher.drain()
        if self.outbox:
            if self.pool is not None and self.db_ok:
                with contextlib.suppress(Exception):  # what does not land now waits in Redis
                    await self.outbox.drain(self.pool)
            if self.outbox.memory:
                log.error("%d deferred write(s) lost at shutdown: the database stayed away", len(self.outbox.memory))
            await self.outbox.close()
        if self.limiter:
            await self.limiter.close()
        if self.http:
            await self.http.close()
        if self.pool:
            await self.pool.close()
        self._started = False

    # -- the database going away and coming back ------------------------------------------------

    @property
    def db_ok(self) -> bool:
        return self.db_down_since is None

    async def on_db(self, run, items):
        """`run(pool, items)` on the current pool, noting a database that went away; at once 503
        while it is away (statements queued behind the one that found out do not wait for it)."""
        if not self.db_ok:
            raise PlatformUnavailable()
        pool = self.pool
        assert pool is not None
        try:
            return await run(pool, items)
        except PoolClosed:
            if pool is self.pool:
                raise
        except UNREACHABLE as exc:
            self.db_failed(exc, pool)
            raise
        # The pool was replaced (the database came back) before this statement got a connection
        # of the old one: nothing was sent, so it goes to the new one.
        assert self.pool is not None
        return await run(self.pool, items)

    def db_failed(self, exc: BaseException, pool: AsyncConnectionPool | None = None) -> None:
        """A statement found the database unreachable: until a fresh connection succeeds, requests
        are answered 503 at once (lifecycle.admit) and their writes go to the outbox. A statement
        of a pool already replaced says nothing about the database now."""
        if self.db_down_since is not None or (pool is not None and pool is not self.pool):
            return
        self.db_down_since = time.monotonic()
        log.error("database unreachable (%s): answering 503 until it returns", type(exc).__name__)
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Try a fresh connection every DB_RETRY_SECONDS; once one works, replace the pool (the old
        one's reconnect back-off would keep it stalled for seconds more) and drain the outbox."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn or conninfo(), autocommit=True) as conn:
                    await conn.execute("SELECT 1")
                fresh = self._new_pool()
                await fresh.open(wait=True, timeout=DB_WAIT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(DB_RETRY_SECONDS)
                continue
            old, self.pool = self.pool, fresh
            down = time.monotonic() - (self.db_down_since or time.monotonic())
            self.db_down_since = None
            log.warning("database reachable again after %.1f s: serving", down)
            if old is not None:
                closing = asyncio.get_running_loop().create_task(old.close(timeout=DB_WAIT_SECONDS))
                self._background.add(closing)
                closing.add_done_callback(self._background.discard)
            self.outbox_wake.set()
            return

    async def write_row(self, row: dict) -> None:
        """A finished usage row (a request refused, or answered without a hold): now, or through
        the outbox while the database is away."""
        if self.db_ok and self.pool is not None:
            pool = self.pool
            try:
                async with pool.connection() as conn:
                    await conn.execute(sql.INSERT_USAGE, row)
                return
            except UNREACHABLE as exc:
                self.db_failed(exc, pool)
        await self.defer("row", row)

    async def defer(self, kind: str, params: dict) -> None:
        """A write that could not land now: to the outbox, for the drainer."""
        assert self.outbox is not None
        await self.outbox.put(kind, params)
        self.outbox_wake.set()

    async def _drain_outbox(self) -> None:
        """Land deferred writes once the database answers: at once when this process deferred one
        or saw the database return, and every OUTBOX_POLL_SECONDS for those of other processes."""
        assert self.outbox is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OUTBOX_POLL_SECONDS):
                    await self.outbox_wake.wait()
            self.outbox_wake.clear()
            if not self.db_ok or self.pool is None:
                continue
            pool = self.pool
            try:
                await self.outbox.drain(pool)
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self.db_failed(exc, pool)
            except Exception:
                log.exception("outbox drain failed; retrying in %.0f s", OUTBOX_POLL_SECONDS)

    async def _flush_metrics(self) -> None:
        """The request path's metrics, to prometheus-client's values once a second (metrics.Tally)."""
        while True:
            await asyncio.sleep(metrics.FLUSH_SECONDS)
            try:
                metrics.TALLY.flush()
            except Exception:  # e.g. the metrics directory removed under us: serving goes on
                log.exception("metrics could not be written")

    def knows_model(self, name: str) -> bool:
        """Whether `name` is a catalog model (as of the cache): a metric label only for those."""
        return name in self._catalog

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
        try:
            info = await asyncio.to_thread(_load_key, key_hash)
        except (DjangoOperationalError, DjangoInterfaceError) as exc:
            if cached is not None:  # the database is away: the key as it was a moment ago
                return cached[1]
            log.warning("database unreachable (%s): a key not seen before could not be checked", type(exc).__name__)
            raise PlatformUnavailable() from exc
        if generation == self._generation:
            self._keys[key_hash] = (now + (KEY_TTL if info else UNKNOWN_KEY_TTL), info)
        return info

    async def catalog(self) -> dict[str, ModelInfo]:
        if time.monotonic() - self._catalog_at < CATALOG_TTL:
            return self._catalog
        async with self._catalog_lock:
            if time.monotonic() - self._catalog_at >= CATALOG_TTL:
                stamp, generation = time.monotonic(), self._generation
                try:
                    self._catalog = await asyncio.to_thread(_load_catalog)
                except (DjangoOperationalError, DjangoInterfaceError) as exc:
                    if not self._catalog:
                        raise PlatformUnavailable() from exc
                    # The database is away: serve the catalog as it was, and try again shortly.
                    log.warning("catalog reload failed (%s): serving the cached catalog", type(exc).__name__)
                    self._catalog_at = stamp - CATALOG_TTL + DB_RETRY_SECONDS * 20
                    return self._catalog
                self._catalog_at = stamp if generation == self._generation else 0.0
        return self._catalog
