"""Requests that reach the ledger together share one statement.

Every reserve and every settle costs PostgreSQL a statement, a transaction and (for the settle) a
WAL flush, and locks its account's row until commit. Instead, per shard of accounts (account id
modulo `shards`), one reserve statement and one settle statement run at a time in a process;
requests arriving meanwhile wait (in the event loop, no connection held) and go together in the
next one. Nothing waits for a batch to fill: a lone request is sent at once, so at low load this
is exactly one statement per request, and under load batches grow by themselves (group commit, as
PostgreSQL does for WAL flushes). A statement locks the accounts it touches in id order
(billing/ledger.py), so batches of different processes that share accounts cannot deadlock.

An account that cannot cover the sum of its requests in a reserve batch gets none of them from
the statement; those requests are then retried one by one, so one request never fails because of
another. A batch that fails outright (a bad row) is retried one by one too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from usage.gateway import sql

log = logging.getLogger("openbili.gateway")

MAX_BATCH = 64

# Errors that mean "the database is not there right now", as opposed to a bad statement or row.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)

Run = Callable[[list[dict]], Awaitable[list[Any]]]


def rows_json(rows: list[dict]) -> str:
    """The %(rows)s parameter: exact decimals (as strings) and ISO timestamps."""
    return json.dumps(rows, separators=(",", ":"), default=json_value)


def json_value(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


async def fetch_all(pool: AsyncConnectionPool, statement: str, params: dict) -> list[tuple]:
    async with pool.connection() as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchall()


async def reserve(pool: AsyncConnectionPool, items: list[dict]) -> list[int | None]:
    """Hold ids (None: the account cannot cover the request) for sql.RESERVE_MANY items."""
    if len(items) == 1:
        holds = dict(await fetch_all(pool, sql.RESERVE_ONE, items[0]))
    else:
        holds = dict(await fetch_all(pool, sql.RESERVE_MANY, {"rows": rows_json(items)}))
    results = [holds.get(item["request_id"]) for item in items]
    per_account = Counter(item["account_id"] for item in items)
    for index, item in enumerate(items):
        if results[index] is None and per_account[item["account_id"]] > 1:
            results[index] = (await reserve(pool, [item]))[0]  # the sum did not fit; alone it may
    return results


async def settle(pool: AsyncConnectionPool, items: list[dict]) -> list[Decimal | None]:
    """The usage rows' cost_usd (None: no pending row was left to finish) for sql.SETTLE_MANY items."""
    if len(items) == 1:
        costs = dict(await fetch_all(pool, sql.SETTLE_ONE, items[0]))
    else:
        costs = dict(await fetch_all(pool, sql.SETTLE_MANY, {"rows": rows_json(items)}))
    return [costs.get(item["request_id"]) for item in items]


async def mark_streaming(pool: AsyncConnectionPool, items: list[dict]) -> list[None]:
    """sql.MARK_STREAMING for the streams in `items` (request_id, first_byte_at, output_reached_client)."""
    async with pool.connection() as conn:
        await conn.execute(sql.MARK_STREAMING, {"rows": rows_json(items)})
    return [None] * len(items)


class Batcher:
    """Runs `run(items)` for the items submitted, one call at a time per shard of accounts; `run`
    returns one result per item, in order."""

    def __init__(self, run: Run, *, name: str, shards: int = 1) -> None:
        self.run = run
        self.name = name
        self.shards = max(1, shards)
        self.waiting: dict[int, list[tuple[dict, asyncio.Future]]] = {}  # shard -> its next batch
        self.tasks: set[asyncio.Task] = set()
        self.sizes: dict[int, int] = {}  # batch size -> statements run (bench/ and tests)

    async def submit(self, account_id: int, item: dict) -> Any:
        shard = account_id % self.shards
        waiting = self.waiting.get(shard)
        if waiting is not None:  # a statement for this shard is running: join the next one
            future = asyncio.get_running_loop().create_future()
            waiting.append((item, future))
            return await future
        self.waiting[shard] = []
        try:
            return (await self.run_batch([item]))[0]
        finally:
            self.next_batch(shard)

    async def run_batch(self, items: list[dict]) -> list[Any]:
        self.sizes[len(items)] = self.sizes.get(len(items), 0) + 1
        if len(items) == 1:
            return await self.run(items)
        try:
            return await self.run(items)
        except UNREACHABLE:
            raise  # one by one would only wait for the database that many times over
        except Exception:
            log.warning("%s batch of %d failed; retrying its requests one by one", self.name, len(items))
        results = []
        for item in items:
            try:
                results.append((await self.run([item]))[0])
            except Exception as exc:
                results.append(exc)
        return results

    def next_batch(self, shard: int) -> None:
        waiting = self.waiting[shard]
        if not waiting:
            del self.waiting[shard]
            return
        batch, self.waiting[shard] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
        task = asyncio.get_running_loop().create_task(self.serve(shard, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, shard: int, batch: list[tuple[dict, asyncio.Future]]) -> None:
        try:
            results = await self.run_batch([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its request was cancelled while waiting
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self.next_batch(shard)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
