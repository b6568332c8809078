"""Ledger writes that must land although PostgreSQL is away for a moment.

A request that was served has to be billed and every request with a known key has to get its
usage row (CONTRACT §3), but the write can fail: the database restarts, a pooled connection drops
mid-statement. Such a write is not lost and not retried in the request: it goes to the outbox, a
Redis list shared by every gateway process, and lands when the database answers again — by the
drainer of any gateway process (GatewayState._drain_outbox) or by the sweeper (usage.services),
which empties the outbox before it releases expired holds, so that a served request is never
swept as "interrupted" while its settle waits here.

Every item is idempotent, so a replay changes nothing and two processes may apply the same item:
a settle only resolves an open hold and finishes a pending row (sql.SETTLE_ONE); a row is only
inserted if its request has none (ON CONFLICT DO NOTHING), after finishing the pending row of a
reserve whose answer was lost with its connection. An item is removed from the list only after it
landed, so a process killed while draining leaves it for the next one.

If Redis is unreachable too, the item waits in this process's memory (and is lost with it: the
log line says so, with the request id).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from openbili.ops import metrics
from usage.gateway import sql
from usage.gateway.batch import UNREACHABLE, json_value

log = logging.getLogger("openbili.gateway")

KEY = "openbili-outbox"
DEAD_KEY = "openbili-outbox-dead"  # items the database refused for good (an operator looks at them)
metrics.REDIS_LISTS[KEY] = ("openbili_outbox_pending", "Deferred writes waiting in the outbox for the database.")
metrics.REDIS_LISTS[DEAD_KEY] = ("openbili_outbox_dead", "Deferred writes the database refused for good.")
BATCH = 100


def document(kind: str, params: dict) -> str:
    """An item: kind 'settle' (sql.SETTLE_ONE's parameters plus the row, should the pending row be
    gone) or 'row' (a usage row to write as it is)."""
    item = {"kind": kind, "request_id": params["request_id"], "params": params}
    return json.dumps(item, separators=(",", ":"), default=json_value)


def text(doc: bytes | str) -> str:
    return doc if isinstance(doc, str) else doc.decode()


class Outbox:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True) if redis_url else None
        self.memory: deque[str] = deque()  # items Redis could not take either

    async def put(self, kind: str, params: dict) -> None:
        metrics.DEFERRED.labels(kind).inc()
        doc = document(kind, params)
        if self.redis is not None:
            try:
                await self.redis.rpush(KEY, doc)
                log.warning("request_id=%s %s deferred to the outbox", params["request_id"], kind)
                return
            except (redis.RedisError, OSError) as exc:
                reason = f"Redis unreachable too ({type(exc).__name__})"
        else:
            reason = "no REDIS_URL"
        self.memory.append(doc)
        log.error(
            "request_id=%s %s kept in process memory until the database returns (%s): lost if this process stops",
            params["request_id"],
            kind,
            reason,
        )

    async def pending(self) -> int:
        waiting = len(self.memory)
        if self.redis is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                waiting += await self.redis.llen(KEY)
        return waiting

    async def drain(self, pool: AsyncConnectionPool) -> int:
        """Apply waiting items until none is left; raises one of UNREACHABLE if the database goes
        away meanwhile (the items stay). Returns how many landed."""
        landed = 0
        while self.memory:
            await self._apply(pool, self.memory[0])
            self.memory.popleft()
            landed += 1
        if self.redis is None:
            return landed
        try:
            while docs := await self.redis.lrange(KEY, 0, BATCH - 1):
                for doc in map(text, docs):
                    await self._apply(pool, doc)
                    await self.redis.lrem(KEY, 1, doc)
                    landed += 1
        except (redis.RedisError, OSError):
            pass  # Redis is away (the rate limiter says so in the log): its items wait for it
        if landed:
            metrics.OUTBOX_LANDED.inc(landed)
            log.warning("outbox: %d deferred write(s) landed", landed)
        return landed

    async def _apply(self, pool: AsyncConnectionPool, doc: str) -> None:
        item = json.loads(doc)
        try:
            async with pool.connection() as conn:
                await apply_async(conn, item)
                await mark_async(conn, item)
        except UNREACHABLE:
            raise
        except psycopg.Error:
            log.exception("request_id=%s outbox item refused by the database; kept in %s", item["request_id"], DEAD_KEY)
            if self.redis is not None:
                await self.redis.rpush(DEAD_KEY, doc)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


# --- applying an item: the same steps on an async connection (gateway) or a sync cursor (sweeper) ---


async def apply_async(conn: psycopg.AsyncConnection, item: dict[str, Any]) -> None:
    params = item["params"]
    if item["kind"] == "settle":
        cursor = await conn.execute(sql.SETTLE_ONE, params)
        if await cursor.fetchone() is None:  # no pending row: already landed, swept, or its reserve lost
            await conn.execute(sql.INSERT_USAGE, lost_reserve_row(params))
        return
    cursor = await conn.execute(PENDING_HOLD, params)
    found = await cursor.fetchone()
    if found is not None:  # the reserve landed although its request saw it fail: release it
        await conn.execute(sql.SETTLE_ONE, release_params(params, found[0]))
    else:
        await conn.execute(sql.INSERT_USAGE, params)


def apply_sync(cursor: psycopg.Cursor, item: dict[str, Any]) -> None:
    params = item["params"]
    if item["kind"] == "settle":
        cursor.execute(sql.SETTLE_ONE, params)
        if cursor.fetchone() is None:
            cursor.execute(sql.INSERT_USAGE, lost_reserve_row(params))
        return
    cursor.execute(PENDING_HOLD, params)
    found = cursor.fetchone()
    if found is not None:
        cursor.execute(sql.SETTLE_ONE, release_params(params, found[0]))
    else:
        cursor.execute(sql.INSERT_USAGE, params)


# A write landing late may fall in an hour the usage roll-up has already summed (usage/rollup.py):
# mark its hour for the next run to recompute. Its own statement, after the item landed
# (autocommit), so that a failure here never undoes the write. Marked whatever the watermark says:
# read here it could be a run's old one, about to pass this hour without the row; a needless mark
# costs one hour's recompute.
MARK_DIRTY = """
INSERT INTO usage_usagehourdirty (hour)
SELECT date_trunc('hour', started_at, 'UTC') FROM usage_usagerecord
 WHERE request_id = %(request_id)s AND started_at = %(started_at)s
ON CONFLICT (hour) DO NOTHING
"""


async def mark_async(conn: psycopg.AsyncConnection, item: dict[str, Any]) -> None:
    try:
        await conn.execute(MARK_DIRTY, row_key(item))
    except UNREACHABLE:
        raise
    except psycopg.Error:
        log.exception("request_id=%s landed; marking its usage hour for the roll-up failed", item["request_id"])


def mark_sync(cursor: psycopg.Cursor, item: dict[str, Any]) -> None:
    try:
        cursor.execute(MARK_DIRTY, row_key(item))
    except UNREACHABLE:
        raise
    except psycopg.Error:
        log.exception("request_id=%s landed; marking its usage hour for the roll-up failed", item["request_id"])


def row_key(item: dict[str, Any]) -> dict:
    """The usage row's key (request_id, started_at: one partition) of an item; both kinds carry
    the whole row, items written before the table was partitioned too."""
    return {"request_id": item["request_id"], "started_at": item["params"]["started_at"]}


PENDING_HOLD = """
SELECT hold_id FROM usage_usagerecord
 WHERE request_id = %(request_id)s AND started_at = %(started_at)s AND billing_result = 'pending'
"""


def release_params(row: dict, hold_id: int) -> dict:
    return row | {"hold_id": hold_id, "cost": 0, "billing_result": "not_billed"}


def lost_reserve_row(params: dict) -> dict:
    row = {column: params[column] for column in sql.COLUMNS}
    message = "Not billed: the request's credit reservation was lost (database restart during the request)."
    return row | {"billing_result": "not_billed", "cost_usd": 0, "error_message": message}


def drain_sync(redis_url: str, conninfo: str) -> int:
    """The sweeper's drain (a Celery worker, its own connection): every item in Redis, oldest
    first. Raises one of UNREACHABLE if the database is still away (the items stay)."""
    if not redis_url:
        return 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    landed = 0
    try:
        if not client.llen(KEY):
            return 0
        conn = psycopg.connect(conninfo, autocommit=True)
        cursor = conn.cursor()
        while docs := client.lrange(KEY, 0, BATCH - 1):
            for raw in map(text, docs):
                item = json.loads(raw)
                try:
                    apply_sync(cursor, item)
                    mark_sync(cursor, item)
                except UNREACHABLE:
                    raise
                except psycopg.Error:
                    log.exception("request_id=%s outbox item refused by the database", item["request_id"])
                    client.rpush(DEAD_KEY, raw)
                client.lrem(KEY, 1, raw)
                landed += 1
        conn.close()
    finally:
        client.close()
    if landed:
        metrics.OUTBOX_LANDED.inc(landed)
        log.warning("outbox: %d deferred write(s) landed (sweeper)", landed)
    return landed
