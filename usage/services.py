"""Writes to usage rows outside the request path: the sweeper and route probes."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import aiohttp
from django.conf import settings
from django.db import connection

from billing import ledger, services
from billing.models import Route
from usage.gateway import outbox, sql
from usage.gateway.providers import provider_for
from usage.gateway.state import conninfo

log = logging.getLogger("openbili.usage")

PROBE_TIMEOUT = 20.0


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
