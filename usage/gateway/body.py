"""A request's body, read at a bounded cost and only when its account can pay (issue "hardening"
#2; the parse bound itself is context.parse_json_object's).

One 32 MiB body of `{},{},…` cost ~0.9 GB and seconds of event loop, from any key, even one of an
account with no credit, since the body was parsed before the balance was looked at. Now:

- each endpoint has its body limit (Endpoint.max_body_bytes; 413 beyond, from Content-Length
  before a byte is read);
- a body above BALANCE_CHECK_BYTES is read, then parsed, only if the account can pay for its
  input at the catalog's cheapest price: one point query, 402 otherwise, before reading it when
  Content-Length announces it. Ordinary requests never pay for the query;
- the JSON values a body may hold are bounded (context.MAX_JSON_VALUES) and counted before
  json.loads builds any.

Measured (a gateway under uvicorn on 2 shared, busy cores; peak RSS of its process above idle;
the slowest GET /v1/models/gpt-5 of those sent one after another meanwhile), before → after:
- 1 × 32 MiB `{},{},…`: answered in 15.8 s → 0.20 s (400); RSS +1.57 GB → +63 MB; other
  requests waited up to 11.0 s → 0.15 s.
- 4 × 32 MiB at once: 69 s → 0.88 s; +3.4 GB → +195 MB (the bodies themselves); 46.8 s → 0.21 s.
  From a $0 key: 402 in 67 s → 0.32 s; +3.2 GB → +1 MB; 52 s → 0.18 s.
- Valid large bodies as before, within the noise: 4 × 8 MiB images, 4 × 5 MiB of 66,000
  messages each (up to 0.74 s, as before), one 32 MiB image.
Parsing them in a worker thread did not help: the C parser keeps the GIL, so a thread stalls the
loop as long; with an object hook that hands the interpreter back after each object, the
longest stall of the 66,000-message bodies went 940 → 490 ms but the median request 46 → 159 ms,
the bodies' own requests 1.9 → 2.8 s, and images gained nothing (median 73 → 122 ms). So the
parse stays on the loop, one at a time, which also bounds the memory parses take at once.
"""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal

from billing import money
from openbili.core.errors import InsufficientBalance, PlatformUnavailable
from usage.gateway import context
from usage.gateway.context import Ctx, declared_length, execute, read_body
from usage.gateway.endpoints.base import Endpoint, estimate_tokens
from usage.gateway.outbox import UNREACHABLE
from usage.gateway.state import GatewayState, ModelInfo

# Above this a body costs a point query of the account's credit before it is read or parsed.
# Below it, parsing costs at most a few milliseconds whatever the body: not worth a round trip
# on every ordinary request (most are a few KiB).
BALANCE_CHECK_BYTES = int(os.environ.get("OPENBILI_BALANCE_CHECK_BYTES", str(64 * 1024)))

# The credit a new hold may take (billing/ledger.py RESERVE: an active account's balance plus
# credit limit, less what is reserved). A read only: the reserve decides, this only refuses early.
AVAILABLE_CREDIT = """
SELECT balance + credit_limit - reserved FROM billing_account WHERE id = %(account_id)s AND status = 'active'
"""


async def read_request(state: GatewayState, ctx: Ctx, endpoint: Endpoint, receive) -> bytes:
    """The body of an authenticated request, within the endpoint's limit; a large one only if the
    account can pay for its input."""
    limit = endpoint.max_body_bytes or context.MAX_BODY_BYTES
    declared = declared_length(ctx)
    if declared is not None and BALANCE_CHECK_BYTES < declared <= limit:  # (beyond the limit: 413)
        await refuse_unaffordable(state, ctx, estimate_tokens(declared))  # before reading a byte
    raw = await read_body(ctx, receive, limit)
    if declared is None and len(raw) > BALANCE_CHECK_BYTES:  # sent chunked: known once read
        await refuse_unaffordable(state, ctx, estimate_tokens(len(raw)))
    return raw


async def refuse_unaffordable(state: GatewayState, ctx: Ctx, input_tokens: int) -> None:
    """402 when the account cannot pay for `input_tokens` at the cheapest input price of the
    catalog: no request this large could be served, so it is not read or parsed."""
    assert ctx.key is not None
    cheapest = cheapest_input_price(await state.catalog(), ctx.started_at)
    if cheapest is None:
        return  # nothing is priced: the model lookup refuses the request, once its body is parsed
    least = money.token_cost(input_tokens, cheapest)
    if not state.db_ok:
        return  # the database is away: the reserve answers 503 (no hold, nothing parsed twice)
    try:
        row = await execute(state, AVAILABLE_CREDIT, {"account_id": ctx.key.account_id})
    except UNREACHABLE as exc:
        state.db_failed(exc)
        raise PlatformUnavailable() from exc
    available = row[0] if row is not None else money.ZERO
    if available < least:
        raise InsufficientBalance(
            f"This request's input costs at least ${least.normalize():f}, more than the account's available credit."
        )


def cheapest_input_price(catalog: dict[str, ModelInfo], now: datetime) -> Decimal | None:
    """The lowest input price (USD per 1M tokens) in force now, of any model."""
    prices = [price.prices.input_per_mtok for model in catalog.values() if (price := model.price_at(now))]
    return min(prices, default=None)
