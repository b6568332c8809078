"""Background responses (`background: true` on an OpenAI route): billed when they finish.

The upstream answers at once with a queued response and no usage; the work and its usage come
later. So the request's hold stays open (for BACKGROUND_HOLD_SECONDS) and its usage row stays
pending with the response id (`MARK`), and the bill is settled once the response is done — by the
poller (usage.services.responses_poll, a beat task every few seconds), or by the customer's own
GET, cancel or DELETE of it (endpoints/stored.py), whichever sees the end first. The settle is the
lifecycle's statement (sql.SETTLE_ONE), so a second one changes nothing. Pure: the callers run it.

A response the customer deletes before it finished could never be billed: DELETE waits for the
end (409 until then; cancel first to stop it).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from billing import money
from usage.gateway import sql
from usage.gateway.providers.openai import OpenAIResponsesProvider, usage_from_openai

# How long a background response may run before the sweeper gives its hold up (not billed).
BACKGROUND_HOLD_SECONDS = int(os.environ.get("OPENBILI_BACKGROUND_HOLD_SECONDS", str(6 * 3600)))
RUNNING = frozenset({"queued", "in_progress"})
PROVIDER = OpenAIResponsesProvider()

# The pending row of a background response, once the upstream has accepted it: where it lives and
# how to find it. Its hold and billing_result stay as they are until it finishes.
MARK = """
UPDATE usage_usagerecord
   SET response_id = %(response_id)s, route_id = %(route_id)s, provider = %(provider)s,
       upstream_model = %(upstream_model)s, status = 200, first_byte_at = %(first_byte_at)s,
       output_reached_client = true, attempts = %(attempts)s::jsonb
 WHERE request_id = %(request_id)s AND started_at = %(started_at)s AND billing_result = 'pending'
"""

MARK_PARAMS = (
    "request_id", "started_at", "response_id", "route_id", "provider", "upstream_model", "first_byte_at", "attempts",
)  # fmt: skip

# What a settle needs of a pending background row (stored.py reads it by response id, the poller
# in bulk).
PENDING_COLUMNS = (
    "request_id", "started_at", "hold_id", "route_id", "provider", "upstream_model", "first_byte_at", "attempts",
    "response_id", "price_snapshot_id", "client_disconnected_at",
)  # fmt: skip


def running(data: dict | None) -> bool:
    return isinstance(data, dict) and data.get("status") in RUNNING


def settle_item(row: dict, data: dict, prices: money.Prices) -> dict | None:
    """The sql.SETTLE_ONE parameters that finish a background row from its response `data` (the
    upstream's GET or cancel answer); None while it is still running."""
    status = data.get("status")
    if not isinstance(status, str) or status in RUNNING:
        return None
    usage = usage_from_openai(data.get("usage")) or money.TokenUsage()
    done = status in ("completed", "incomplete")
    billing_result = "billed" if done else ("failed_but_billable" if not usage.is_empty else "not_billed")
    cost = money.usage_cost(prices, usage) if billing_result != "not_billed" else money.ZERO
    error = data["error"] if isinstance(data.get("error"), dict) else {}
    attempts = row["attempts"] if isinstance(row["attempts"], str) else json.dumps(row["attempts"])
    item: dict[str, Any] = dict.fromkeys(sql.FINAL_COLUMNS)
    item |= {
        "request_id": row["request_id"],
        "started_at": row["started_at"],
        "hold_id": row["hold_id"],
        "cost": cost,
        "billing_result": billing_result,
        "route_id": row["route_id"],
        "provider": row["provider"],
        "upstream_model": row["upstream_model"],
        "status": 200,
        "error_class": "" if done else "upstream_or_platform_error",
        "error_code": "" if done else str(error.get("code") or f"response_{status}")[:64],
        "error_message": "" if done else str(error.get("message") or f"The background response ended {status}.")[:500],
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "image_count": usage.images,
        "tokens_estimated": False,
        "output_reached_client": True,
        "client_disconnected_at": row["client_disconnected_at"],
        "first_byte_at": row["first_byte_at"],
        "finished_at": datetime.now(UTC),
        "attempts": attempts,
        "response_id": row["response_id"],
    }
    return item
