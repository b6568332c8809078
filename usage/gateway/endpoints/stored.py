"""Stored responses (the Responses API's state), reachable only by the account that made them.

OpenAI keeps a stored response under the platform's organisation, where every account's would be
visible to every other through the one platform key. So the gateway is the access check: an id is
this account's when one of its usage rows recorded it (`response_id`, written by the settle of a
Responses request passed through to an OpenAI route), and that row's route is where the response
lives — a continuation (`previous_response_id`) and `GET/DELETE /v1/responses/{id}`,
`POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items` go there. Any other id is
"not found", whoever made it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp

from billing import money
from openbili.core.errors import InvalidRequest, OpenbiliError, UpstreamError, UpstreamUnavailable
from usage.gateway import deferred, sql
from usage.gateway.context import Ctx, authenticate, db_text, now_utc, send_bytes
from usage.gateway.providers.openai.responses import OpenAIResponsesProvider
from usage.gateway.state import GatewayState, ModelInfo, RouteInfo

# (Its column list is constants, deferred.PENDING_COLUMNS: nothing of the request's.)
FIND = f"""
SELECT route_id, model_requested, billing_result, {", ".join(deferred.PENDING_COLUMNS)}
  FROM usage_usagerecord
 WHERE account_id = %(account_id)s AND response_id = %(response_id)s
 ORDER BY started_at DESC LIMIT 1
"""  # noqa: S608
PRICES = """
SELECT input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, per_image, per_request
  FROM billing_pricesnapshot WHERE id = %(id)s
"""
PROVIDER = OpenAIResponsesProvider()
ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
# (method, suffix after /v1/responses/{id}) → what it does, for the row's endpoint
OPERATIONS = {("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items")}
LISTING = frozenset({"after", "before", "limit", "order", "include", "include[]"})


class ResponseStillRunning(OpenbiliError):
    status = 409
    code = "response_in_progress"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = (
        "This background response is still running and has not been billed yet: cancel it "
        "(POST /v1/responses/{id}/cancel) or wait for it to finish, then delete it."
    )


class ResponseNotFound(OpenbiliError):
    status = 404
    code = "response_not_found"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"


def well_formed(response_id: object) -> bool:
    """An id the upstream could have given (OpenAI's are resp_ + hex): anything else is not
    found without a query (a NUL or a lone surrogate would not even reach PostgreSQL)."""
    return isinstance(response_id, str) and ID.fullmatch(response_id) is not None


async def find(state: GatewayState, account_id: int, response_id: str) -> tuple | None:
    """(route id, model, billing_result, *deferred.PENDING_COLUMNS) of this account's stored
    response, or None."""
    if not well_formed(response_id):
        return None
    return await _fetch(state, FIND, {"account_id": account_id, "response_id": response_id[:100]})


async def _fetch(state: GatewayState, statement: str, params: dict) -> tuple | None:
    async def run(pool, _):
        async with pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchone()

    return await state.on_db(run, None)


async def settle_if_done(state: GatewayState, found: tuple, data: dict) -> None:
    """A background response seen finished: settle its bill now (the poller would, later)."""
    if found[2] != "pending":
        return
    row = dict(zip(deferred.PENDING_COLUMNS, found[3:], strict=True))
    prices = await _fetch(state, PRICES, {"id": row["price_snapshot_id"]})
    if prices is None:
        return
    item = deferred.settle_item(row, data, money.Prices(*prices))
    if item is not None:
        await _fetch(state, sql.SETTLE_ONE, item)


def _route(catalog: dict[str, ModelInfo], route_id: int | None) -> RouteInfo | None:
    for model in catalog.values():
        for route in model.routes:
            if route.id == route_id:
                return route
    return None


async def pin(state: GatewayState, ctx: Ctx, body: dict, model: ModelInfo) -> ModelInfo:
    """A continuation goes to the route that stored its conversation, if this model has it (or a
    route of the same upstream account); a response of another account is not found."""
    previous = body.get("previous_response_id")
    if previous is None:
        return model
    assert ctx.key is not None
    found = await find(state, ctx.key.account_id, previous)
    stored = _route(await state.catalog(), found[0]) if found else None
    if stored is None:
        raise InvalidRequest(
            f"Previous response with id '{db_text(previous, 100)}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    same = tuple(
        r for r in model.routes if r.id == stored.id or (r.base_url == stored.base_url and r.secret == stored.secret)
    )
    if not same:
        raise InvalidRequest(
            f"The response '{db_text(previous, 100)}' is stored with another provider account; continue it "
            "with the model that made it, or send the conversation in `input`.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return dataclasses.replace(model, routes=same)


def _listing(query: bytes) -> str:
    """The input_items list's own parameters (cursor, limit, order, include), re-encoded: nothing
    else of the client's query string reaches the upstream URL."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=False)
    return urlencode([(k, v) for k, v in pairs if k in LISTING][:20])


async def _call(state: GatewayState, call) -> tuple[int, Any, dict | None, bytes]:
    """(status, headers, the JSON object or None, the bytes) of one call to the upstream."""
    assert state.http is not None
    try:
        async with state.http.request(
            call.method, call.url, headers=call.headers, data=call.body, timeout=TIMEOUT
        ) as response:
            data, status, headers = await response.read(), response.status, response.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamUnavailable(f"Could not reach the upstream ({type(exc).__name__}).") from exc
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    return status, headers, parsed if isinstance(parsed, dict) else None, data


async def handle(
    state: GatewayState, ctx: Ctx, send, method: str, response_id: str, suffix: str, query: bytes = b""
) -> None:
    """Forward one stored-response call to the route that holds it; its usage row (not billed).
    A background response seen finished is billed on the way (its own row, deferred.py)."""
    ctx.endpoint = "/v1/responses/{id}" + suffix  # the row's endpoint names the operation, not the id
    key = await authenticate(state, ctx)
    row = ctx.new_row()
    found = await find(state, key.account_id, response_id)
    route = _route(await state.catalog(), found[0]) if found else None
    # A key scoped to other models does not see this one's responses either.
    if found is None or route is None or not key.allows(found[1]):
        raise ResponseNotFound(f"Response with id '{db_text(response_id, 100)}' not found.")
    row.update(model_requested=found[1], route_id=route.id, provider=route.provider)
    row["upstream_model"] = route.upstream_model
    if method == "DELETE" and found[2] == "pending":
        # A background response deleted before it was billed could never be: settle it first.
        status, _, current, _ = await _call(state, PROVIDER.stored_call("GET", response_id, "", route=route))
        if status >= 300 or current is None or deferred.running(current):
            raise ResponseStillRunning()
        await settle_if_done(state, found, current)
    listing = _listing(query) if suffix == "/input_items" else ""
    started = time.monotonic()
    status, headers, parsed, data = await _call(
        state, PROVIDER.stored_call(method, response_id, suffix, route=route, query=listing)
    )
    attempt = {"attempt": 1, "route_id": route.id, "provider": route.provider, "upstream_model": route.upstream_model}
    attempt |= {"status": status, "error": "", "ms": round((time.monotonic() - started) * 1000, 1)}
    if status >= 300:
        error = PROVIDER.failure(status=status, body=data, headers=headers).error
        if status == 404:
            error = ResponseNotFound(f"Response with id '{db_text(response_id, 100)}' not found.")
        attempt["error"] = error.code
        row["attempts"] = json.dumps([attempt])
        raise error
    if parsed is None:
        raise UpstreamError("the upstream returned a malformed response")
    if method != "DELETE" and suffix != "/input_items":
        await settle_if_done(state, found, parsed)
    row.update(status=200, billing_result="not_billed", finished_at=now_utc(), attempts=json.dumps([attempt]))
    await state.write_row(row)
    ctx.row_written = True
    await send_bytes(send, ctx, 200, data)
