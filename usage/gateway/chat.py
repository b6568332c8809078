"""POST /v1/chat/completions: the request lifecycle (CONTRACT §2.2).

authenticate → validate → resolve the model (existence, scope, visibility) → freeze the price
snapshot → clamp max tokens → reserve the maximum cost with the pending usage row (402 if it
cannot be covered; upstream never called) → call upstream, retrying once on connect error,
timeout or 5xx before any byte reached the client → relay → settle the actual cost and finish the
usage row in one statement. Every attempt is recorded under the request's trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import aiohttp

from billing import ledger, money
from openbili.core.errors import (
    InsufficientBalance,
    InvalidRequest,
    ModelNotReady,
    OpenbiliError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from usage.gateway import sql
from usage.gateway.app import (
    Ctx,
    authenticate,
    db_text,
    error_headers,
    execute,
    now_utc,
    parse_json_object,
    read_body,
    resolve_model,
)
from usage.gateway.errors import openai_error_body
from usage.gateway.providers import adapter_for
from usage.gateway.providers.base import StreamRelay, UpstreamFailure
from usage.gateway.state import GatewayState, ModelInfo, RouteInfo

log = logging.getLogger("openbili.gateway")

CONNECT_TIMEOUT = 10.0
MAX_RECORDED_TOKENS = 2**31 - 1  # the usage row's PositiveIntegerField (PostgreSQL integer)
STREAM_INTERRUPTED = "stream_interrupted"


class UpstreamOutcome(Exception):
    """An attempt that failed before any byte reached the client."""

    def __init__(self, failure: UpstreamFailure) -> None:
        self.failure = failure


def validate(body: dict) -> tuple[str, bool, int | None, int]:
    """(model, stream, requested max tokens, n) — or InvalidRequest naming the bad parameter."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    requested = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
        requested = value if requested is None else min(requested, value)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise InvalidRequest("'n' must be an integer between 1 and 128.", param="n")
    return model, stream, requested, n


def clamp(body: dict, requested: int | None, limit: int) -> int | None:
    """Clamp max_tokens / max_completion_tokens to the model's output limit (never reject)."""
    if requested is None:
        return None
    applied = min(requested, limit)
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            body[name] = min(body[name], limit)
    return applied


def estimate_tokens(byte_count: int) -> int:
    """Rough tokens for bytes we saw but the upstream did not count (about 4 bytes a token)."""
    return math.ceil(byte_count / 4)


async def handle(state: GatewayState, ctx: Ctx, receive, send) -> None:
    key = await authenticate(state, ctx)
    raw = await read_body(ctx, receive)
    row = ctx.new_row()
    body = parse_json_object(raw)
    model_name, stream, requested, n = validate(body)
    # A huge max_tokens is clamped, never rejected; the row's integer column keeps at most 2**31 - 1.
    recorded = None if requested is None else min(requested, MAX_RECORDED_TOKENS)
    row.update(model_requested=db_text(model_name, 100), stream=stream, max_tokens_requested=recorded)
    model = resolve_model(await state.catalog(), key, model_name)
    price = model.price_at(ctx.started_at)
    if price is None:
        raise ModelNotReady(f"The model '{model_name}' has no price yet.", param="model")
    assert state.limiter is not None
    await state.limiter.admit(key)
    applied = clamp(body, requested, model.max_output_tokens)
    row.update(max_tokens_applied=applied, price_snapshot_id=price.snapshot_id)
    ttl = hold_ttl(model)
    hold_amount = money.max_cost(
        price.prices,
        max_input_tokens=min(len(raw), model.context_window),
        max_output_tokens=(applied or model.max_output_tokens) * n,
    )
    assert state.reserves is not None
    item = {column: row[column] for column in sql.STARTING_COLUMNS}
    hold_id = await state.reserves.submit(key.account_id, item | {"amount": hold_amount, "ttl_seconds": ttl})
    if hold_id is None:
        raise InsufficientBalance(
            f"This request may cost up to ${hold_amount.normalize():f}, more than the account's available credit."
        )
    ctx.row_written = True
    call = Call(state, ctx, send, receive, model, price.prices, body, raw, stream, hold_id=hold_id, ttl=ttl)
    await call.run()


def hold_ttl(model: ModelInfo) -> int:
    # Long enough for the slowest legitimate request (route timeout, plus a retry), so that the
    # sweeper only ever releases holds whose request really died.
    slowest = max((route.timeout for route in model.routes), default=600.0)
    return int(slowest * 2 + 60)


class Call:
    """One reserved request talking to upstream, until its hold is settled."""

    def __init__(self, state, ctx, send, receive, model, prices, body, raw, stream, *, hold_id, ttl):
        self.state: GatewayState = state
        self.ctx: Ctx = ctx
        self.send = send
        self.receive = receive
        self.model: ModelInfo = model
        self.prices: money.Prices = prices
        self.body: dict = body
        self.raw: bytes = raw
        self.stream: bool = stream
        self.hold_id: int = hold_id
        self.ttl = ttl
        self.renew_at = time.monotonic() + ttl / 3  # a stream outliving this renews its hold
        self.attempts: list[dict] = []
        self.route: RouteInfo | None = None
        self.settled = False
        # Recorded before prepare() turns include_usage on for the upstream.
        options = body.get("stream_options")
        self.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True

    # -- upstream attempts ------------------------------------------------------------------

    def route_for(self, attempt: int) -> RouteInfo:
        routes = self.model.routes
        return routes[min(attempt, len(routes) - 1)]  # the retry goes to the next route if any

    async def run(self) -> None:
        try:
            response = await self.connect()
        except UpstreamOutcome as outcome:
            await self.finish_failed(outcome.failure)
            return
        except asyncio.CancelledError:
            await self.finish_failed(UpstreamFailure(UpstreamError("The request was cancelled.")))
            raise
        try:
            if self.stream:
                await self.relay_stream(response)
            else:
                await self.relay_whole(response)
        finally:
            response.release()
            if not self.settled:  # an unexpected error: never leave the hold open
                await self.finish_failed(UpstreamFailure(OpenbiliError()))

    async def connect(self) -> aiohttp.ClientResponse:
        """Send to upstream; retry once on connect error, timeout or 5xx. Returns a 2xx response."""
        failure: UpstreamFailure | None = None
        for attempt in range(2):
            route = self.route_for(attempt)
            self.route = route
            adapter = adapter_for(route.provider)
            if adapter is None:
                failure = UpstreamFailure(UpstreamUnavailable(f"Provider '{route.provider}' is not supported yet."))
                self.record(route, None, failure.error.code, time.monotonic())
                continue
            call = adapter.prepare(
                fmt="chat",
                body=self.body,
                upstream_model=route.upstream_model,
                base_url=route.base_url,
                secret=route.secret,
                stream=self.stream,
            )
            started = time.monotonic()
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=route.timeout)
            assert self.state.http is not None
            try:
                response = await self.state.http.request(
                    call.method, call.url, headers=call.headers, data=call.body, timeout=timeout
                )
            except TimeoutError:
                failure = UpstreamFailure(UpstreamTimeout(), retryable=True)
            except aiohttp.ClientError as exc:
                failure = UpstreamFailure(
                    UpstreamUnavailable(f"Could not reach the upstream ({type(exc).__name__})."), retryable=True
                )
            else:
                if response.status < 300:
                    if not self.stream:
                        # Read the whole answer inside the attempt: a body cut short has not reached
                        # the client yet, so it is retried like a timeout (relay_whole reuses the bytes).
                        try:
                            await response.read()
                        except (TimeoutError, aiohttp.ClientError):
                            response.release()
                            failure = UpstreamFailure(
                                UpstreamTimeout("The upstream stopped answering."), retryable=True
                            )
                            self.record(route, response.status, failure.error.code, started)
                            continue
                    self.record(route, response.status, "", started)
                    return response
                try:
                    error_body = await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    error_body = b""
                finally:
                    response.release()
                failure = adapter.failure(status=response.status, body=error_body, headers=response.headers)
                self.record(route, response.status, failure.error.code, started)
                if not failure.retryable:
                    raise UpstreamOutcome(failure)
                continue
            self.record(route, None, failure.error.code, started)
        assert failure is not None
        raise UpstreamOutcome(failure)

    def record(self, route: RouteInfo, status: int | None, error: str, started: float) -> None:
        self.attempts.append(
            {
                "attempt": len(self.attempts) + 1,
                "route_id": route.id,
                "provider": route.provider,
                "upstream_model": route.upstream_model,
                "status": status,
                "error": error,
                "ms": round((time.monotonic() - started) * 1000, 1),
            }
        )

    # -- relaying ---------------------------------------------------------------------------

    async def relay_whole(self, response: aiohttp.ClientResponse) -> None:
        adapter = adapter_for(response_provider(self))
        data = await response.read()  # read (and retried if cut) in connect(): aiohttp returns it cached
        try:
            reply = adapter.parse(fmt="chat", body=data)
        except OpenbiliError as error:
            await self.finish_failed(UpstreamFailure(error))
            return
        usage, estimated = reply.usage, False
        if usage is None:
            usage, estimated = self.estimate(len(data) if reply.output_bytes is None else reply.output_bytes), True
        await self.settle(usage, billing_result="billed", status=200, estimated=estimated, output_reached=True)
        ctx = self.ctx
        ctx.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", reply.content_type.encode()),
                    (b"content-length", str(len(reply.body)).encode()),
                    *ctx.id_headers(),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": reply.body})

    async def relay_stream(self, response: aiohttp.ClientResponse) -> None:
        ctx = self.ctx
        adapter = adapter_for(response_provider(self))
        relay: StreamRelay = adapter.stream_relay(fmt="chat", client_wants_usage=self.client_wants_usage)
        ctx.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *ctx.id_headers(),
                ],
            }
        )
        first_byte_at = None
        watcher = asyncio.create_task(self.watch_disconnect(response))
        cut = False
        try:
            async for chunk in response.content.iter_any():
                out = relay.feed(chunk)
                if out:
                    if first_byte_at is None:
                        first_byte_at = now_utc()
                    await self.send({"type": "http.response.body", "body": out, "more_body": True})
                if relay.upstream_error is not None or ctx.disconnected_at is not None:
                    break
                if time.monotonic() >= self.renew_at:
                    await self.renew_hold()
        except (TimeoutError, aiohttp.ClientError):
            cut = True
        finally:
            watcher.cancel()
        self.ctx.row["first_byte_at"] = first_byte_at
        output = relay.output_events > 0
        usage, estimated = relay.usage, False
        if ctx.disconnected_at is not None:
            if usage is None:
                usage, estimated = self.estimate(relay.output_chars), True
            await self.settle(
                usage if output else money.TokenUsage(),
                billing_result="failed_but_billable" if output else "not_billed",
                status=200,
                estimated=estimated,
                output_reached=output,
                error=("client_disconnected", "The client disconnected during the stream."),
            )
            return
        if relay.completed and relay.upstream_error is None and not cut:
            if usage is None:
                usage, estimated = self.estimate(relay.output_chars), True
            await self.settle(usage, billing_result="billed", status=200, estimated=estimated, output_reached=True)
            await self.send({"type": "http.response.body", "body": relay.final, "more_body": False})
            return
        # The upstream cut the stream (or sent an error event): bill what was consumed, then end the
        # client's stream with an error event and no [DONE], so SDKs raise instead of succeeding.
        if usage is None and output:
            usage, estimated = self.estimate(relay.output_chars), True
        error = UpstreamError("The upstream interrupted the stream.", code="upstream_stream_interrupted")
        await self.settle(
            usage if (output or usage) else money.TokenUsage(),
            billing_result="failed_but_billable" if (output or usage) else "not_billed",
            status=200,
            estimated=estimated,
            output_reached=output,
            error=(error.code, relay.upstream_error.message if relay.upstream_error else error.message),
        )
        event = relay.error_event(error, request_id=ctx.request_id, trace_id=ctx.trace_id)
        await self.send({"type": "http.response.body", "body": event, "more_body": False})

    async def renew_hold(self) -> None:
        self.renew_at = time.monotonic() + self.ttl / 3
        try:
            await execute(self.state, ledger.EXTEND_HOLD, {"hold_id": self.hold_id, "ttl_seconds": self.ttl})
        except Exception:  # the stream goes on; at worst the sweeper releases the hold unbilled
            log.exception("request_id=%s hold renewal failed", self.ctx.request_id)

    async def watch_disconnect(self, response: aiohttp.ClientResponse) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.ctx.disconnected_at = now_utc()
                response.close()  # wakes the relay loop at once
                return

    def estimate(self, output_bytes: int) -> money.TokenUsage:
        return money.TokenUsage(
            input_tokens=estimate_tokens(len(self.raw)), output_tokens=estimate_tokens(output_bytes)
        )

    # -- settling ---------------------------------------------------------------------------

    async def finish_failed(self, failure: UpstreamFailure) -> None:
        """An upstream failure before any byte reached the client: bill reported usage, if any."""
        error = failure.error
        usage = failure.usage
        await self.settle(
            usage or money.TokenUsage(),
            billing_result="failed_but_billable" if usage and not usage.is_empty else "not_billed",
            status=error.status,
            error=(error.code, error.message),
            error_class=error.error_class,
        )
        ctx = self.ctx
        if not ctx.response_started:
            body = json.dumps(openai_error_body(error, request_id=ctx.request_id, trace_id=ctx.trace_id)).encode()
            ctx.response_started = True
            await self.send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *ctx.id_headers(),
                        *error_headers(ctx, error),
                    ],
                }
            )
            await self.send({"type": "http.response.body", "body": body})

    async def settle(
        self,
        usage: money.TokenUsage,
        *,
        billing_result: str,
        status: int,
        estimated: bool = False,
        output_reached: bool = False,
        error: tuple[str, str] | None = None,
        error_class: str | None = None,
    ) -> None:
        if self.settled:
            return
        self.settled = True
        cost = money.usage_cost(self.prices, usage) if billing_result != "not_billed" else money.ZERO
        route = self.route
        row = self.ctx.row
        assert row is not None
        row.update(
            route_id=route.id if route else None,
            provider=route.provider if route else "",
            upstream_model=route.upstream_model if route else "",
            status=status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            image_count=usage.images,
            tokens_estimated=estimated,
            billing_result=billing_result,
            output_reached_client=output_reached,
            client_disconnected_at=self.ctx.disconnected_at,
            finished_at=now_utc(),
            attempts=json.dumps(self.attempts),
        )
        if error is not None:
            code, message = error
            row.update(
                error_code=code,
                error_message=db_text(message, 500),
                error_class=error_class or (STREAM_INTERRUPTED if status == 200 else "upstream_or_platform_error"),
            )
        if row["first_byte_at"] is None and output_reached:
            row["first_byte_at"] = row["finished_at"]
        try:
            # Shielded: a client going away must not cancel the settle half-way through.
            assert self.state.settles is not None
            item = {column: row[column] for column in sql.FINAL_COLUMNS}
            item |= {"request_id": row["request_id"], "billing_result": row["billing_result"]}
            item |= {"hold_id": self.hold_id, "cost": cost}
            charged = await asyncio.shield(self.state.settles.submit(row["account_id"], item))
            if charged is None:
                await self.record_lost_reserve(row)
            assert self.state.limiter is not None and self.ctx.key is not None
            self.state.limiter.consume(self.ctx.key, usage)
        except Exception:
            # The hold stays open and the sweeper releases it; the customer is not charged twice.
            log.exception("request_id=%s settle failed", self.ctx.request_id)

    async def record_lost_reserve(self, row: dict) -> None:
        """No pending row to finish: the sweeper already finished it (a request that outlived its
        hold), or a database crash lost the reserve (see sql.RESERVE_MANY). In the second
        case write the row now, not billed: there is no hold to charge."""
        log.warning("request_id=%s settled no pending usage row", self.ctx.request_id)
        message = "Not billed: the request's credit reservation was lost (database restart during the request)."
        await execute(
            self.state,
            sql.INSERT_USAGE,
            row | {"billing_result": "not_billed", "cost_usd": 0, "error_message": db_text(message, 500)},
        )


def response_provider(call: Call) -> str:
    assert call.route is not None
    return call.route.provider
