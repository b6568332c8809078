"""Requests of one account that reach the ledger together share one statement.

Every reserve and every settle locks its account's row until commit, and costs PostgreSQL a
statement, a transaction and (for the settle) a WAL flush. A busy account's requests would queue
on that row one statement at a time. Instead, per account, one reserve statement and one settle
statement run at a time; requests arriving meanwhile wait (in the event loop, no connection held)
and go together in the next one. Nothing waits for a batch to fill: a lone request is sent at once,
so at low load this is exactly one statement per request, and under load the batches grow by
themselves (group commit, as PostgreSQL does for WAL flushes).

A batch is all-or-nothing in SQL. If it fails (the account cannot cover the sum of the reserves, a
bad row) its requests are retried one by one, so one request never fails because of another.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usage.gateway import sql

log = logging.getLogger("openbili.gateway")

MAX_BATCH = 64

Run = Callable[[int, list[dict]], Awaitable[list[Any]]]


def rows_json(rows: list[dict]) -> str:
    """The %(rows)s parameter: exact decimals (as strings) and ISO timestamps."""
    return json.dumps(rows, separators=(",", ":"), default=_json_value)


def _json_value(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class RetryAlone(Exception):  # a signal, not an error
    """The batch as a whole could not be done: retry its requests one by one."""


async def fetch_all(pool: AsyncConnectionPool, statement: str, params: dict) -> list[tuple]:
    async with pool.connection() as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchall()


async def reserve(pool: AsyncConnectionPool, account_id: int, items: list[dict]) -> list[int | None]:
    """Hold ids (None: the account cannot cover the request) for sql.RESERVE_MANY items."""
    if len(items) == 1:
        rows = await fetch_all(pool, sql.RESERVE_ONE, items[0] | {"account_id": account_id})
    else:
        rows = await fetch_all(pool, sql.RESERVE_MANY, {"account_id": account_id, "rows": rows_json(items)})
    if not rows and len(items) > 1:
        raise RetryAlone  # the sum did not fit; some of them alone may
    holds = dict(rows)
    return [holds.get(item["request_id"]) for item in items]


async def settle(pool: AsyncConnectionPool, account_id: int, items: list[dict]) -> list[Decimal | None]:
    """The usage rows' cost_usd (None: no pending row was left to finish) for sql.SETTLE_MANY items."""
    if len(items) == 1:
        costs = dict(await fetch_all(pool, sql.SETTLE_ONE, items[0]))
    else:
        costs = dict(await fetch_all(pool, sql.SETTLE_MANY, {"rows": rows_json(items)}))
    return [costs.get(item["request_id"]) for item in items]


class Batcher:
    """Runs `run(account_id, items)` for the items submitted per account, one call at a time per
    account; `run` returns one result per item, in order."""

    def __init__(self, run: Run, *, name: str) -> None:
        self.run = run
        self.name = name
        self.waiting: dict[int, list[tuple[dict, asyncio.Future]]] = {}  # account -> next batch
        self.tasks: set[asyncio.Task] = set()
        self.sizes: dict[int, int] = {}  # batch size -> statements run (bench/ and tests)

    async def submit(self, account_id: int, item: dict) -> Any:
        waiting = self.waiting.get(account_id)
        if waiting is not None:  # a statement for this account is running: join the next one
            future = asyncio.get_running_loop().create_future()
            waiting.append((item, future))
            return await future
        self.waiting[account_id] = []
        try:
            return (await self.run_batch(account_id, [item]))[0]
        finally:
            self.next_batch(account_id)

    async def run_batch(self, account_id: int, items: list[dict]) -> list[Any]:
        self.sizes[len(items)] = self.sizes.get(len(items), 0) + 1
        if len(items) == 1:
            return await self.run(account_id, items)
        try:
            return await self.run(account_id, items)
        except RetryAlone:
            pass
        except Exception:
            log.warning("%s batch of %d failed; retrying its requests one by one", self.name, len(items))
        results = []
        for item in items:
            try:
                results.append((await self.run(account_id, [item]))[0])
            except Exception as exc:
                results.append(exc)
        return results

    def next_batch(self, account_id: int) -> None:
        waiting = self.waiting[account_id]
        if not waiting:
            del self.waiting[account_id]
            return
        batch, self.waiting[account_id] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
        task = asyncio.get_running_loop().create_task(self.serve(account_id, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, account_id: int, batch: list[tuple[dict, asyncio.Future]]) -> None:
        try:
            results = await self.run_batch(account_id, [item for item, _ in batch])
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
            self.next_batch(account_id)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
