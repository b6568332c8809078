"""THE request lifecycle (CONTRACT §2.2), written once for every endpoint.

authenticate → read and parse the body → validate (the endpoint) → resolve the model (existence,
scope, visibility) → freeze the price snapshot → rate-limit admit → clamp max tokens → reserve the
maximum cost with the pending usage row (402 if it cannot be covered; upstream never called) →
attempts (retry once on connect error, timeout or 5xx before any byte reached the client, to the
same or the next route) → relay → settle the actual cost and finish the usage row in one statement.

The endpoint (endpoints/) owns the client's format, the provider (providers/) the upstream's;
when they differ a translation (translate/) joins them, built per attempt from the client's body,
and when they match the upstream's bytes pass through untouched. Nothing here builds JSON of
either format.

A hold never outlives an exception: once the reserve has succeeded, whatever raises (a bug, a
translation error, a cancelled task, an absurd upstream header) the request is settled or
released and its row finished before the handler returns (`Call.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time

import aiohttp

from billing import ledger, money
from openbili.core.errors import (
    ClientDisconnected,
    InsufficientBalance,
    ModelNotReady,
    OpenbiliError,
    PlatformUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openbili.ops import tracing
from usage.gateway import deferred, sql
from usage.gateway.body import read_request
from usage.gateway.content_coding import decoder_for
from usage.gateway.context import (
    JSON,
    ClientGone,
    Ctx,
    authenticate,
    db_text,
    error_headers,
    execute,
    now_utc,
    parse_json_object,
    resolve_model,
    send_bytes,
    send_error,
    write_rejection,
)
from usage.gateway.endpoints.base import MAX_RECORDED_TOKENS, Endpoint, Parsed, estimate_tokens
from usage.gateway.endpoints.served import adapter_for, require_served
from usage.gateway.outbox import UNREACHABLE, lost_reserve_row
from usage.gateway.providers import provider_for
from usage.gateway.providers.base import Provider, StreamReader, UpstreamFailure
from usage.gateway.state import GatewayState, ModelInfo, RouteInfo
from usage.gateway.translate import Translation

log = logging.getLogger("openbili.gateway")

CONNECT_TIMEOUT = 10.0
# A stream still running this long after its first byte writes that (and whether output reached
# the client) on its pending row, which the sweeper then keeps if the process is killed. Shorter
# streams, the bench's and most of the suite's, settle first and never pay for the statement.
MARK_AFTER_SECONDS = float(os.environ.get("OPENBILI_STREAM_MARK_SECONDS", "1"))
STREAM_INTERRUPTED = "stream_interrupted"

# Settles of requests whose handler was cancelled while their reserve was in flight (see reserve()).
_orphans: set[asyncio.Task] = set()


class UpstreamOutcome(Exception):
    """An attempt that failed before any byte reached the client."""

    def __init__(self, failure: UpstreamFailure) -> None:
        self.failure = failure


def hold_ttl(model: ModelInfo) -> int:
    # Long enough for the slowest legitimate request (route timeout, plus a retry), so that the
    # sweeper only ever releases holds whose request really died.
    slowest = max((route.timeout for route in model.routes), default=600.0)
    return int(slowest * 2 + 60)


# --- before the reserve ---------------------------------------------------------------------------


async def serve(state: GatewayState, ctx: Ctx, endpoint: Endpoint, receive, send) -> None:
    """One request of `endpoint`, start to finish. Never raises (a cancellation aside)."""
    try:
        call = await admit(state, ctx, endpoint, receive, send)
    except OpenbiliError as error:
        await reject(state, ctx, endpoint, send, error)
        return
    except ClientGone:
        await client_gone(state, ctx, endpoint, send)
        return
    except Exception:
        log.exception("request_id=%s trace_id=%s unexpected error", ctx.request_id, ctx.trace_id)
        await reject(state, ctx, endpoint, send, OpenbiliError())
        return
    await call.run()


async def client_gone(state: GatewayState, ctx: Ctx, endpoint: Endpoint, send) -> None:
    """The client left before its body was read: a known key still gets its one row (CONTRACT §3)."""
    log.info("request_id=%s client went away before the request was read", ctx.request_id)
    ctx.disconnected_at = now_utc()
    if ctx.key is not None:
        (ctx.row or ctx.new_row())["client_disconnected_at"] = ctx.disconnected_at
        await reject(state, ctx, endpoint, send, ClientDisconnected())


async def refuse(state: GatewayState, ctx: Ctx, endpoint: Endpoint, send, error: OpenbiliError) -> None:
    """A request refused before its body is read (a wrong method, an unknown URL): its one row
    when it presented a known key, whatever its key's state."""
    if ctx.key is None:
        with contextlib.suppress(OpenbiliError):  # no key, or an unusable one: the refusal stands
            await authenticate(state, ctx)
    await reject(state, ctx, endpoint, send, error)


async def reject(state: GatewayState, ctx: Ctx, endpoint: Endpoint, send, error: OpenbiliError) -> None:
    """A request refused before anything billable happened: its one row (if the key is known) and
    the error in the endpoint's format."""
    ctx.error = error
    if ctx.key is not None and not ctx.row_written:
        try:
            await write_rejection(state, ctx, error)
        except Exception:
            log.exception("request_id=%s usage row could not be written", ctx.request_id)
    elif ctx.key is None:
        log.info("request_id=%s trace_id=%s rejected %s %s", ctx.request_id, ctx.trace_id, error.status, error.code)
    if not ctx.response_started:
        body = endpoint.error_body(error, request_id=ctx.request_id, trace_id=ctx.trace_id)
        await send_error(send, ctx, error, body)


async def admit(state: GatewayState, ctx: Ctx, endpoint: Endpoint, receive, send) -> Call:
    key = await authenticate(state, ctx)
    raw = await read_request(state, ctx, endpoint, receive)
    row = ctx.new_row()
    body = endpoint.parse(raw, ctx.headers.get("content-type", b"").decode("latin-1"))
    parsed = endpoint.validate(body)
    recorded = None if parsed.max_tokens is None else min(parsed.max_tokens, MAX_RECORDED_TOKENS)
    row.update(model_requested=db_text(parsed.model, 100), stream=parsed.stream, max_tokens_requested=recorded)
    model = resolve_model(await state.catalog(), key, parsed.model)
    require_served(model, endpoint.fmt, endpoint.path)
    model = await endpoint.prepare(state, ctx, body, model)
    price = model.price_at(ctx.started_at)
    if price is None:
        raise ModelNotReady(f"The model '{parsed.model}' has no price yet.", param="model")
    applied = endpoint.clamp(body, parsed, model)
    assert state.limiter is not None
    # TPM is reserved up front (OpenAI's rule: the prompt's estimate plus max_tokens) and corrected
    # to the actual usage when the request settles, so a burst cannot overshoot the limit.
    tpm_tokens = estimate_tokens(len(raw)) + (applied or 0) * parsed.choices
    await state.limiter.admit(key, tokens=tpm_tokens)
    row.update(max_tokens_applied=applied, price_snapshot_id=price.snapshot_id)
    # A background response keeps its hold until it finishes (deferred.py), long after this request.
    ttl = deferred.BACKGROUND_HOLD_SECONDS if parsed.deferred else hold_ttl(model)
    hold_amount = money.max_cost(
        price.prices,
        max_input_tokens=endpoint.input_bound(raw, parsed, model),
        max_output_tokens=endpoint.output_bound(parsed, applied, model),
        images=parsed.images_out,
    )
    call = Call(state, ctx, endpoint, send, receive, model, price.prices, body, raw, parsed, ttl=ttl)
    call.tpm_tokens = tpm_tokens
    try:
        if not state.db_ok:  # fail fast while the database is away (its row lands later)
            raise PlatformUnavailable()
        hold_id = await call.reserve(hold_amount)
    except (PlatformUnavailable, *UNREACHABLE) as exc:
        state.limiter.consume(key, money.TokenUsage(), reserved=tpm_tokens)
        # The reserve may have landed with its answer lost: the deferred row releases it then.
        raise PlatformUnavailable() from exc
    if hold_id is None:
        state.limiter.consume(key, money.TokenUsage(), reserved=tpm_tokens)  # its TPM back: nothing ran
        raise InsufficientBalance(
            f"This request may cost up to ${hold_amount.normalize():f}, more than the account's available credit."
        )
    return call


# --- after the reserve ----------------------------------------------------------------------------


class Call:
    """One reserved request talking to upstream, until its hold is settled."""

    def __init__(
        self,
        state: GatewayState,
        ctx: Ctx,
        endpoint: Endpoint,
        send,
        receive,
        model: ModelInfo,
        prices: money.Prices,
        body: dict,
        raw: bytes,
        parsed: Parsed,
        *,
        ttl: int,
    ) -> None:
        self.state: GatewayState = state
        self.ctx: Ctx = ctx
        self.endpoint: Endpoint = endpoint
        self.send = send
        self.receive = receive
        self.model: ModelInfo = model
        self.prices: money.Prices = prices
        self.body: dict = body  # the client's request, clamped; never changed by an attempt
        self.raw: bytes = raw
        self.parsed: Parsed = parsed
        self.stream: bool = parsed.stream
        self.hold_id: int | None = None
        self.hold_amount = money.ZERO
        self.tpm_tokens = 0  # reserved at admission, corrected at settle
        self.ttl = ttl
        self.renew_at = time.monotonic() + ttl / 3  # a stream outliving this renews its hold
        self.attempts: list[dict] = ctx.attempts  # the usage row's, and the request's metrics
        self.route: RouteInfo | None = None
        self.provider: Provider | None = None
        self.translation: Translation | None = None
        self.response: aiohttp.ClientResponse | None = None
        self.reader: StreamReader | None = None
        self.output_sent = False  # output bytes reached the client (the row's output_reached_client)
        self.mark_timer: asyncio.TimerHandle | None = None  # MARK_AFTER_SECONDS after the first byte
        self.reply_data: dict | None = None  # a whole answer's parsed JSON
        # The first and last stream events the client got (Endpoint.track_sent only).
        self.sent: tuple[dict | None, dict | None] = (None, None)
        self.settled = False

    async def reserve(self, amount) -> int | None:
        """The hold's id (None: the account cannot cover `amount`), with the pending usage row."""
        ctx, row = self.ctx, self.ctx.row
        assert self.state.reserves is not None and row is not None
        self.hold_amount = amount
        item = {column: row[column] for column in sql.STARTING_COLUMNS}
        task = asyncio.ensure_future(
            self.state.reserves.submit(row["account_id"], item | {"amount": amount, "ttl_seconds": self.ttl})
        )
        try:
            self.hold_id = await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled while the reserve was in flight: it may still land. Release it then, so
            # that it does not wait for the sweeper.
            task.add_done_callback(self._release_orphan)
            raise
        ctx.row_written = self.hold_id is not None
        return self.hold_id

    def _release_orphan(self, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None or task.result() is None:
            return
        self.hold_id = task.result()
        self.ctx.row_written = True
        failure = UpstreamFailure(OpenbiliError("The request was cancelled before it reached the upstream."))
        orphan = asyncio.get_running_loop().create_task(self.finish_failed(failure))
        _orphans.add(orphan)
        orphan.add_done_callback(_orphans.discard)

    async def run(self) -> None:
        watcher = asyncio.create_task(self.watch_disconnect())
        try:
            response = await self.connect()
            self.response = response
            if self.stream:
                await self.relay_stream(response)
            else:
                await self.relay_whole(response)
        except UpstreamOutcome as outcome:
            await self.finish_failed(outcome.failure)
        except OpenbiliError as error:  # e.g. a request the translation cannot carry: 400
            await self.finish_failed(UpstreamFailure(error))
        except asyncio.CancelledError:
            await self.finish_failed(UpstreamFailure(UpstreamError("The request was cancelled.")))
            raise
        except Exception:
            log.exception("request_id=%s trace_id=%s unexpected error", self.ctx.request_id, self.ctx.trace_id)
            await self.finish_failed(UpstreamFailure(OpenbiliError()))
        finally:
            watcher.cancel()
            if self.response is not None:
                self.response.release()
            if not self.settled:  # only a failure inside finish_failed itself gets here
                await self.settle(
                    money.TokenUsage(), billing_result="not_billed", status=500, error=("platform_error", "unfinished")
                )

    # -- upstream attempts ------------------------------------------------------------------

    def route_for(self, attempt: int) -> RouteInfo:
        routes = self.model.routes
        return routes[min(attempt, len(routes) - 1)]  # the retry goes to the next route if any

    async def connect(self) -> aiohttp.ClientResponse:
        """Send to upstream; retry once on connect error, timeout or 5xx. Returns a 2xx response."""
        failure: UpstreamFailure | None = None
        for attempt in range(2):
            route = self.route_for(attempt)
            self.route = route
            adapter = adapter_for(route.provider, self.endpoint.fmt)
            if adapter is None:
                failure = UpstreamFailure(
                    UpstreamUnavailable(f"Provider '{route.provider}' cannot serve {self.endpoint.path} yet.")
                )
                self.record(route, None, failure.error.code, time.monotonic())
                continue
            provider, translation = adapter
            self.provider, self.translation = provider, translation
            # Each attempt starts from the client's body: a translation builds a new one, a
            # pass-through provider only sets top-level keys on its shallow copy.
            if translation is None:
                upstream_body = dict(self.body)
            else:
                upstream_body = translation.request(self.body, max_output_tokens=self.model.max_output_tokens)
            call = provider.call(upstream_body, route=route, stream=self.stream, client_headers=self.ctx.headers)
            started = time.monotonic()
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=route.timeout)
            assert self.state.http is not None
            try:
                response = await self.state.http.request(
                    call.method, call.url, headers=call.headers, data=call.body, timeout=timeout
                )
            except asyncio.CancelledError:
                self.record(route, None, "cancelled", started)  # the upstream was called: keep it
                raise
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
                    decoder = decoder_for(response.headers)
                    if decoder is not None:
                        error_body = decoder.decode(error_body)
                except (TimeoutError, aiohttp.ClientError, UpstreamError):
                    error_body = b""
                finally:
                    response.release()
                failure = provider.failure(status=response.status, body=error_body, headers=response.headers)
                self.record(route, response.status, failure.error.code, started)
                if not failure.retryable:
                    raise UpstreamOutcome(failure)
                continue
            self.record(route, None, failure.error.code, started)
        assert failure is not None
        raise UpstreamOutcome(failure)

    def record(self, route: RouteInfo, status: int | None, error: str, started: float) -> None:
        ended = time.monotonic()
        seconds = ended - started
        self.ctx.upstream_seconds += seconds
        if tracing.ENABLED:
            self.ctx.spans.append((started, ended))
        self.attempts.append(
            {
                "attempt": len(self.attempts) + 1,
                "route_id": route.id,
                "provider": route.provider,
                "upstream_model": route.upstream_model,
                "status": status,
                "error": error,
                "ms": round(seconds * 1000, 1),
            }
        )

    # -- relaying ---------------------------------------------------------------------------

    async def relay_whole(self, response: aiohttp.ClientResponse) -> None:
        assert self.provider is not None
        data = await response.read()  # read (and retried if cut) in connect(): aiohttp returns it cached
        decoder = decoder_for(response.headers)
        if decoder is not None:
            data = decoder.decode(data)
        reply = self.provider.reply(data)
        self.reply_data = reply.data
        if self.parsed.deferred and self.translation is None and deferred.running(reply.data):
            await self.defer(data)
            return
        if self.translation is None:
            translated = None  # pass-through: the upstream's bytes, untouched
        else:
            try:
                if reply.data is None:
                    raise UpstreamError("the upstream returned a malformed response")
                translated = self.translation.response(reply.data, request=self.body)
            except Exception as exc:
                # The upstream did the work (and bills us for what it reports): so does the row.
                if not isinstance(exc, OpenbiliError):
                    log.exception("request_id=%s translating the reply failed", self.ctx.request_id)
                error = exc if isinstance(exc, OpenbiliError) else OpenbiliError()
                raise UpstreamOutcome(UpstreamFailure(error, usage=reply.usage)) from exc
        try:
            if self.translation is None:
                out = await self.endpoint.deliver(self, reply.data, data)
            else:
                out = await self.endpoint.deliver(self, translated, None)
        except OpenbiliError as exc:  # the platform failed to deliver it (e.g. storing an image): not billed
            raise UpstreamOutcome(UpstreamFailure(exc)) from exc
        usage, estimated = reply.usage, False
        if usage is None:
            usage, estimated = dataclasses.replace(self.estimate(reply.output_bytes), images=reply.images), True
        ctx = self.ctx
        if ctx.disconnected_at is not None:
            # The client left while the upstream worked: nothing reached it, but the upstream
            # consumed (and bills us for) what it reports.
            await self.settle(
                usage,
                billing_result="failed_but_billable",
                status=200,
                estimated=estimated,
                error=("client_disconnected", "The client disconnected before the answer was sent."),
            )
            return
        await self.settle(usage, billing_result="billed", status=200, estimated=estimated, output_reached=True)
        ctx.status = 200
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", JSON), (b"content-length", str(len(out)).encode()), *ctx.id_headers()],
            }
        )
        await self.send({"type": "http.response.body", "body": out})

    async def relay_stream(self, response: aiohttp.ClientResponse) -> None:
        ctx, endpoint = self.ctx, self.endpoint
        assert self.provider is not None
        reader = self.reader = self.provider.reader()
        decoder = decoder_for(response.headers)
        translator = (
            self.translation.stream(client_wants_usage=self.parsed.wants_usage, request=self.body)
            if self.translation
            else None
        )
        finals = endpoint.final_events
        track = endpoint.track_sent
        held = b""  # the last event(s) of a Responses stream, sent once the bill is settled
        wants_usage = self.parsed.wants_usage
        ctx.status = 200
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
        assert ctx.row is not None
        row = ctx.row
        cut = False
        began = False  # an upstream event arrived: it has read (and bills) the prompt
        failure: OpenbiliError | None = None
        relay_started = time.monotonic()
        try:
            async for chunk in response.content.iter_any():
                events = reader.feed(chunk if decoder is None else decoder.feed(chunk))
                began = began or bool(events)
                if translator is None:
                    out = b"".join(e.raw for e in events if not e.final and (wants_usage or not e.hidden))
                    if finals:
                        held += b"".join(e.raw for e in events if e.final)
                    if track:
                        self.note_sent([e.data for e in events if e.data is not None and not e.final])
                else:
                    translated = [client for e in events for client in translator.feed(e)]
                    out = b"".join(endpoint.encode(c) for c in translated if c.get("type") not in finals)
                    if finals:
                        held += b"".join(endpoint.encode(c) for c in translated if c.get("type") in finals)
                    if track:
                        self.note_sent([c for c in translated if c.get("type") not in finals])
                if ctx.disconnected_at is not None:
                    break  # nobody to send to: what the upstream made so far never reached the client
                if out:
                    if row["first_byte_at"] is None:
                        row["first_byte_at"] = now_utc()
                        ctx.first_byte = time.monotonic()
                        self.mark_timer = asyncio.get_running_loop().call_later(MARK_AFTER_SECONDS, self.mark)
                    await self.send({"type": "http.response.body", "body": out, "more_body": True})
                    # What the client got, as opposed to what the upstream generated (billed).
                    self.output_sent = reader.output_events > 0
                if reader.completed or reader.upstream_error is not None or ctx.disconnected_at is not None:
                    break
                if time.monotonic() >= self.renew_at:
                    await self.renew_hold()
        except (TimeoutError, aiohttp.ClientError):
            cut = True
        except OpenbiliError as exc:  # e.g. a corrupt compressed stream
            failure = exc
        except Exception:  # a bug (say, in a translation) mid-stream: bill what was sent, end the stream
            log.exception("request_id=%s trace_id=%s stream relay failed", ctx.request_id, ctx.trace_id)
            failure = OpenbiliError()
        ctx.upstream_seconds += time.monotonic() - relay_started  # the stream's pace is the upstream's
        output = began or reader.output_events > 0  # the upstream consumed tokens: billable
        usage, estimated = reader.usage, False
        if ctx.disconnected_at is not None:
            if usage is None:
                usage, estimated = self.estimate(reader.output_chars), True
            await self.settle(
                usage if output else money.TokenUsage(),
                billing_result="failed_but_billable" if output else "not_billed",
                status=200,
                estimated=estimated and output,
                output_reached=self.output_sent,
                error=("client_disconnected", "The client disconnected during the stream."),
            )
            return
        if reader.completed and reader.upstream_error is None and not cut and failure is None:
            if usage is None:
                usage, estimated = self.estimate(reader.output_chars), True
            await self.settle(usage, billing_result="billed", status=200, estimated=estimated, output_reached=True)
            await self.send({"type": "http.response.body", "body": held + endpoint.terminator, "more_body": False})
            return
        # The upstream cut the stream (or sent an error event): bill what was consumed, then end the
        # client's stream with an error event and no terminator, so SDKs raise instead of succeeding.
        if usage is None and output:
            usage, estimated = self.estimate(reader.output_chars), True
        error = failure or UpstreamError("The upstream interrupted the stream.", code="upstream_stream_interrupted")
        message = reader.upstream_error.message if reader.upstream_error else error.message
        await self.settle(
            usage if usage is not None and (output or not usage.is_empty) else money.TokenUsage(),
            billing_result="failed_but_billable" if (output or usage) else "not_billed",
            status=200,
            estimated=estimated,
            output_reached=self.output_sent,
            error=(error.code, message),
        )
        event = endpoint.stream_error(error, request_id=ctx.request_id, trace_id=ctx.trace_id, sent=self.sent)
        await self.send({"type": "http.response.body", "body": event, "more_body": False})

    async def defer(self, out: bytes) -> None:
        """A background response the upstream has queued: its row stays pending with the response
        id and its hold open, to be settled when it finishes (deferred.py); the client gets the
        queued response now."""
        self.settled = True  # by the poller or the customer's GET, not by this request
        route, ctx, row = self.route, self.ctx, self.ctx.row
        assert route is not None and row is not None and self.provider is not None
        row.update(
            response_id=db_text(self.provider.stored_id(self.reply_data, None), 100),
            route_id=route.id,
            provider=route.provider,
            upstream_model=route.upstream_model,
            first_byte_at=now_utc(),
            attempts=json.dumps(self.attempts),
        )
        try:
            await execute(self.state, deferred.MARK, {column: row[column] for column in deferred.MARK_PARAMS})
        except Exception:  # unmarked, nobody settles it: the sweeper releases the hold, not billed
            log.exception("request_id=%s background response could not be marked for billing", ctx.request_id)
        if self.state.limiter is not None and ctx.key is not None:
            self.state.limiter.consume(ctx.key, money.TokenUsage(), reserved=self.tpm_tokens)
        await send_bytes(self.send, ctx, 200, out)

    def note_sent(self, events: list[dict]) -> None:
        if events:
            self.sent = (self.sent[0] or events[0], events[-1])

    def mark(self) -> None:
        """MARK_AFTER_SECONDS into the stream: its row says it is streaming (sql.MARK_STREAMING);
        again later once output reached the client, if it had not yet."""
        self.mark_timer = None
        row = self.ctx.row
        if self.settled or row is None or self.state.marks is None or not self.state.db_ok:
            return
        item = {"request_id": row["request_id"], "started_at": row["started_at"], "first_byte_at": row["first_byte_at"]}
        item["output_reached_client"] = self.output_sent
        task = asyncio.ensure_future(self.state.marks.submit(0, item))
        _orphans.add(task)
        task.add_done_callback(_marked)
        if not self.output_sent:
            self.mark_timer = asyncio.get_running_loop().call_later(MARK_AFTER_SECONDS, self.mark)

    async def renew_hold(self) -> None:
        self.renew_at = time.monotonic() + self.ttl / 3
        try:
            await execute(self.state, ledger.EXTEND_HOLD, {"hold_id": self.hold_id, "ttl_seconds": self.ttl})
        except Exception:  # the stream goes on; at worst the sweeper releases the hold unbilled
            log.exception("request_id=%s hold renewal failed", self.ctx.request_id)

    async def watch_disconnect(self) -> None:
        """Notes the client leaving, at any point after its body was read; a stream stops at once."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.settled:
                    self.ctx.disconnected_at = now_utc()
                    if self.stream and self.response is not None:
                        self.response.close()  # wakes the relay loop at once
                return

    def estimate(self, output_bytes: int) -> money.TokenUsage:
        """Usage the upstream did not report: the output from what was generated; the input as the
        stream reported it before it broke (Anthropic's message_start), else from the request."""
        output_tokens = estimate_tokens(output_bytes)
        reported = self.reader.input_usage if self.reader is not None else None
        if reported is not None:
            return dataclasses.replace(reported, output_tokens=output_tokens)
        prompt = self.endpoint.prompt_bytes(self.raw, self.body)
        return money.TokenUsage(input_tokens=estimate_tokens(prompt), output_tokens=output_tokens)

    # -- settling ---------------------------------------------------------------------------

    async def finish_failed(self, failure: UpstreamFailure) -> None:
        """A failure before the answer began (or, for a stream, whatever broke it): bill reported
        usage, if any, and tell the client in its own format."""
        error = failure.error
        usage = failure.usage
        ctx = self.ctx
        stream_started = ctx.response_started
        reader = self.reader
        estimated = False
        if stream_started and reader is not None and reader.output_events and usage is None:
            usage, estimated = reader.usage, False
            if usage is None:
                usage, estimated = self.estimate(reader.output_chars), True
        await self.settle(
            usage or money.TokenUsage(),
            billing_result="failed_but_billable" if usage and not usage.is_empty else "not_billed",
            status=200 if stream_started else error.status,
            estimated=estimated,
            output_reached=self.output_sent,
            error=(error.code, error.message),
            error_class=error.error_class,
        )
        try:
            if stream_started:
                event = self.endpoint.stream_error(
                    error, request_id=ctx.request_id, trace_id=ctx.trace_id, sent=self.sent
                )
                await self.send({"type": "http.response.body", "body": event, "more_body": False})
                return
            body = self.endpoint.error_body(error, request_id=ctx.request_id, trace_id=ctx.trace_id)
            ctx.status = error.status
            await self.send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", JSON),
                        (b"content-length", str(len(body)).encode()),
                        *ctx.id_headers(),
                        *error_headers(ctx, error),
                    ],
                }
            )
            await self.send({"type": "http.response.body", "body": body})
        except Exception:  # the client is gone; the bill is settled
            log.info("request_id=%s error answer not delivered", ctx.request_id)

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
        if self.mark_timer is not None:
            self.mark_timer.cancel()
        try:
            cost = money.usage_cost(self.prices, usage) if billing_result != "not_billed" else money.ZERO
            if cost > self.hold_amount:
                # Charged up to the hold only (the row's uncharged_usd keeps the rest): the bound
                # of endpoints/base.py was wrong for this request, which an operator must see.
                log.warning(
                    "request_id=%s usage cost %s exceeded its hold %s", self.ctx.request_id, cost, self.hold_amount
                )
            route = self.route
            row = self.ctx.row
            assert row is not None
            row.update(
                route_id=route.id if route else None,
                provider=route.provider if route else "",
                upstream_model=route.upstream_model if route else "",
                status=status,
                input_tokens=min(usage.input_tokens, MAX_RECORDED_TOKENS),
                output_tokens=min(usage.output_tokens, MAX_RECORDED_TOKENS),
                cached_input_tokens=min(usage.cached_input_tokens, MAX_RECORDED_TOKENS),
                cache_write_tokens=min(usage.cache_write_tokens, MAX_RECORDED_TOKENS),
                reasoning_tokens=min(usage.reasoning_tokens, MAX_RECORDED_TOKENS),
                image_count=min(usage.images, MAX_RECORDED_TOKENS),
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
            if self.provider is not None and self.translation is None and self.body.get("store") is not False:
                # A stored response: this row is how its id is known to be this account's (stored.py).
                row["response_id"] = db_text(self.provider.stored_id(self.reply_data, self.reader), 100)
            if row["first_byte_at"] is None and output_reached:  # a whole answer, sent after the settle
                row["first_byte_at"] = row["finished_at"]
            # Shielded: a client going away must not cancel the settle half-way through.
            assert self.state.settles is not None
            item = {column: row[column] for column in sql.FINAL_COLUMNS}
            item |= {"request_id": row["request_id"], "billing_result": row["billing_result"]}
            item |= {"hold_id": self.hold_id, "cost": cost}
            row["cost_usd"] = min(cost, self.hold_amount)  # what the settle charges (its log line's until it says)
            if not self.state.db_ok:
                raise PlatformUnavailable()
            charged = await asyncio.shield(self.state.settles.submit(row["account_id"], item))
            if charged is None:
                await self.record_lost_reserve(row)
            else:
                row["cost_usd"] = charged
        except (PlatformUnavailable, *UNREACHABLE):
            # The database is away: the settle lands when it returns (outbox.py), also if the
            # statement did land and only its answer was lost (a settle changes nothing twice).
            assert row is not None
            await self.state.defer("settle", row | item)
        except Exception:
            # The hold stays open and the sweeper releases it; the customer is not charged twice.
            log.exception("request_id=%s settle failed", self.ctx.request_id)
        finally:
            # The TPM reservation becomes the actual usage, whatever happened to the ledger write.
            if self.state.limiter is not None and self.ctx.key is not None:
                self.state.limiter.consume(self.ctx.key, usage, reserved=self.tpm_tokens)

    async def record_lost_reserve(self, row: dict) -> None:
        """No pending row to finish: the sweeper already finished it (a request that outlived its
        hold), or a database crash lost the reserve (see sql.RESERVE_MANY). In the second
        case write the row now, not billed: there is no hold to charge."""
        log.warning("request_id=%s settled no pending usage row", self.ctx.request_id)
        await self.state.write_row(lost_reserve_row(row))


def _marked(task: asyncio.Future) -> None:
    _orphans.discard(task)  # type: ignore[arg-type]
    if not task.cancelled() and task.exception() is not None:  # only the sweeper's row would miss it
        log.warning("marking a stream's row failed: %s", type(task.exception()).__name__)


# --- token counting (no hold, no charge) ----------------------------------------------------------


async def count_tokens(state: GatewayState, ctx: Ctx, endpoint: Endpoint, receive, send) -> None:
    """POST /v1/messages/count_tokens: forwarded to the model's first route whose provider counts
    tokens (Anthropic), estimated otherwise or when that upstream is unreachable. Free, but like
    every request with a known key it gets its usage row and counts against the key's RPM."""
    try:
        key = await authenticate(state, ctx)
        raw = await read_request(state, ctx, endpoint, receive)
        row = ctx.new_row()
        body = parse_json_object(raw)
        parsed = endpoint.validate(body)
        row["model_requested"] = db_text(parsed.model, 100)
        model = resolve_model(await state.catalog(), key, parsed.model)
        require_served(model, endpoint.fmt, endpoint.path)
        assert state.limiter is not None
        await state.limiter.admit(key)
        out, route, attempts = await _count_upstream(state, ctx, model, body)
        if out is None:
            estimate = estimate_tokens(len(raw)) + parsed.images * 1600
            out = json.dumps({"input_tokens": estimate}).encode()
        row.update(
            route_id=route.id if route else None,
            provider=route.provider if route else "",
            upstream_model=route.upstream_model if route else "",
            status=200,
            billing_result="not_billed",
            tokens_estimated=route is None,
            finished_at=now_utc(),
            attempts=json.dumps(attempts),
        )
        await state.write_row(row)
        ctx.row_written = True
        ctx.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", JSON), (b"content-length", str(len(out)).encode()), *ctx.id_headers()],
            }
        )
        await send({"type": "http.response.body", "body": out})
    except OpenbiliError as error:
        await reject(state, ctx, endpoint, send, error)
    except ClientGone:
        await client_gone(state, ctx, endpoint, send)
    except Exception:
        log.exception("request_id=%s trace_id=%s unexpected error", ctx.request_id, ctx.trace_id)
        await reject(state, ctx, endpoint, send, OpenbiliError())


async def _count_upstream(
    state: GatewayState, ctx: Ctx, model: ModelInfo, body: dict
) -> tuple[bytes | None, RouteInfo | None, list[dict]]:
    """The upstream's count (its bytes), the route that counted, the attempt; (None, None, …) to estimate.
    An upstream 4xx is the client's (a bad request) and passed on as such."""
    for route in model.routes:
        provider = provider_for(route.provider)
        call = provider.count_tokens_call(dict(body), route=route, client_headers=ctx.headers) if provider else None
        if call is None:
            continue
        assert state.http is not None and provider is not None
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=min(route.timeout, 30))
        attempt = {
            "attempt": 1,
            "route_id": route.id,
            "provider": route.provider,
            "upstream_model": route.upstream_model,
        }
        try:
            async with state.http.request(
                call.method, call.url, headers=call.headers, data=call.body, timeout=timeout
            ) as response:
                data = await response.read()
                attempt |= {"status": response.status, "ms": round((time.monotonic() - started) * 1000, 1)}
                if response.status < 300:
                    return data, route, [attempt | {"error": ""}]
                failure = provider.failure(status=response.status, body=data, headers=response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.info(
                "request_id=%s count_tokens upstream unreachable (%s): estimated", ctx.request_id, type(exc).__name__
            )
            return None, None, [attempt | {"status": None, "error": "upstream_unavailable"}]
        if not failure.retryable:
            raise failure.error
        return None, None, [attempt | {"error": failure.error.code}]
    return None, None, []
