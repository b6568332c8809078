"""Writes to usage rows outside the request path: the sweeper, route probes and the poller that
bills background responses."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import aiohttp
from django.conf import settings
from django.db import connection

from billing import ledger, money, services
from billing.models import PriceSnapshot, Route
from usage.gateway import deferred, outbox, sql
from usage.gateway.providers import provider_for
from usage.gateway.state import RouteInfo, conninfo

log = logging.getLogger("openbili.usage")

PROBE_TIMEOUT = 20.0
POLL_TIMEOUT = 20.0


def requests_sweep(*, limit: int = 500) -> int:
    """Release expired holds (their request died) and finish their usage rows as interrupted.

    Safe to run anywhere, any number of times, concurrently with live requests: a hold is resolved
    at most once, so a request that settles at the same moment wins or loses cleanly. The outbox's
    deferred writes land first: a request that was served while the database was away is billed,
    not released as interrupted.
    """
    outbox.drain_sync(settings.REDIS_URL, conninfo())
    with connection.cursor() as cursor:
        cursor.execute(ledger.EXPIRED_HOLDS, {"limit": limit})
        hold_ids = [row[0] for row in cursor.fetchall()]
        released = 0
        for hold_id in hold_ids:
            cursor.execute(sql.SWEEP_HOLD, {"hold_id": hold_id, "cost": Decimal(0)})
            row = cursor.fetchone()
            released += bool(row and row[0])
    if released:
        log.warning("sweeper released %d expired hold(s)", released)
    return released


async def _probe_one(session: aiohttp.ClientSession, route: Route, secret: str) -> dict:
    provider = provider_for(route.provider)
    if provider is None:
        return {"ok": False, "error": f"provider '{route.provider}' is not supported yet"}
    call = provider.probe_call(
        kind=route.model.kind, upstream_model=route.upstream_model, base_url=route.base_url, secret=secret
    )
    started = time.monotonic()
    try:
        async with session.request(call.method, call.url, headers=call.headers, data=call.body) as response:
            await response.read()
            latency = int((time.monotonic() - started) * 1000)
            ok = 200 <= response.status < 300
            return {
                "ok": ok,
                "status_code": response.status,
                "latency_ms": latency,
                "error": "" if ok else f"HTTP {response.status}",
            }
    except (TimeoutError, aiohttp.ClientError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: upstream unreachable or too slow"}


def routes_probe(*, model: str | None = None) -> list[tuple[Route, bool]]:
    """Send the cheapest real request through each active route and record the outcome.

    The latest probe of a route decides whether its model is customer-visible (CONTRACT §4).
    """
    routes = list(Route.objects.filter(active=True).select_related("model").order_by("model__name", "priority"))
    if model is not None:
        routes = [route for route in routes if route.model.name == model]
    secrets: dict[int, str | None] = {}
    for route in routes:
        try:
            secrets[route.pk] = services.route_secret(route)
        except Exception:  # undecryptable: the probe fails, the secret is never printed
            secrets[route.pk] = None

    async def run_all() -> list[dict]:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(route: Route) -> dict:
                secret = secrets[route.pk]
                if secret is None:
                    return {"ok": False, "error": "secret cannot be decrypted with the configured keys"}
                return await _probe_one(session, route, secret)

            return await asyncio.gather(*(one(route) for route in routes))

    outcomes = asyncio.run(run_all()) if routes else []
    results = []
    for route, outcome in zip(routes, outcomes, strict=True):
        services.probe_record(route=route, **outcome)
        results.append((route, outcome["ok"]))
    return results


def responses_poll(*, limit: int = 200) -> int:
    """Bill the background responses that have finished (usage/gateway/deferred.py): GET each
    pending one from the route that holds it and settle those done. Returns how many were settled.

    Safe to run anywhere, any number of times, beside the gateway's own settles of the same rows
    (a customer's GET): the settle is the lifecycle's one statement, which finds no open hold the
    second time. A response the upstream no longer has (deleted, expired) waits for the sweeper,
    which releases its hold when it expires."""
    from usage.models import UsageRecord

    rows = list(
        UsageRecord.objects.filter(billing_result="pending", hold__isnull=False)
        .exclude(response_id="")
        .order_by("started_at")
        .values("price_snapshot_id", "model_requested", *deferred.PENDING_COLUMNS)[:limit]
    )
    if not rows:
        return 0
    routes = Route.objects.in_bulk({row["route_id"] for row in rows})
    prices = {
        snapshot.pk: money.Prices(
            input_per_mtok=snapshot.input_per_mtok,
            output_per_mtok=snapshot.output_per_mtok,
            cached_input_per_mtok=snapshot.cached_input_per_mtok,
            cache_write_per_mtok=snapshot.cache_write_per_mtok,
            per_image=snapshot.per_image,
            per_request=snapshot.per_request,
        )
        for snapshot in PriceSnapshot.objects.filter(pk__in={row["price_snapshot_id"] for row in rows})
    }
    secrets: dict[int, str] = {}
    for route in routes.values():
        try:
            secrets[route.pk] = services.route_secret(route)
        except Exception:  # undecryptable: its responses wait (the probe reports the route)
            log.warning("route %s: secret cannot be decrypted; its background responses wait", route.pk)

    async def fetch_all() -> list[dict | None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT)) as session:
            return await asyncio.gather(*(_fetch_response(session, routes, secrets, row) for row in rows))

    settled = 0
    with connection.cursor() as cursor:
        for row, data in zip(rows, asyncio.run(fetch_all()), strict=True):
            price = prices.get(row["price_snapshot_id"])
            item = deferred.settle_item(row, data, price) if data is not None and price is not None else None
            if item is None:
                continue
            cursor.execute(sql.SETTLE_ONE, item)
            settled += len(cursor.fetchall())
    return settled


async def _fetch_response(session: aiohttp.ClientSession, routes: dict, secrets: dict, row: dict) -> dict | None:
    route = routes.get(row["route_id"])
    if route is None or route.pk not in secrets:
        return None
    info = RouteInfo(
        id=route.pk,
        provider=route.provider,
        base_url=route.base_url,
        upstream_model=route.upstream_model,
        secret=secrets[route.pk],
        timeout=POLL_TIMEOUT,
    )
    call = deferred.PROVIDER.stored_call("GET", row["response_id"], "", route=info)
    try:
        async with session.request(call.method, call.url, headers=call.headers) as response:
            if response.status >= 300:
                return None
            data = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        log.info("background response %s not polled: %s", row["request_id"], type(exc).__name__)
        return None
    return data if isinstance(data, dict) else None
