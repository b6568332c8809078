"""The gateway's writes: the ledger statements of billing/ledger.py composed with the usage row,
so a request costs two round trips to PostgreSQL (reserve + settle), each one atomic statement."""

from __future__ import annotations

from billing.ledger import RESERVE_CTE, SETTLE_CTE

COLUMNS = (
    "request_id", "trace_id", "account_id", "api_key_id", "key_prefix", "endpoint", "model_requested",
    "route_id", "provider", "upstream_model", "stream", "status", "error_class", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "image_count", "tokens_estimated", "max_tokens_requested", "max_tokens_applied", "cost_usd",
    "billing_result", "price_snapshot_id", "output_reached_client", "client_disconnected_at", "started_at",
    "first_byte_at", "finished_at", "attempts", "user_agent",
)  # fmt: skip

_VALUES = ", ".join("%(attempts)s::jsonb" if c == "attempts" else f"%({c})s" for c in COLUMNS)

# A rejected request (no hold): one row, written once even if replayed.
INSERT_USAGE = f"""
INSERT INTO usage_usagerecord ({", ".join(COLUMNS)})
VALUES ({_VALUES})
ON CONFLICT (request_id) DO NOTHING
"""

# What a pending row knows when its hold is taken; every other column starts at a constant, so
# the reserve sends 13 parameters instead of 34.
STARTING_COLUMNS = (
    "request_id", "trace_id", "account_id", "api_key_id", "key_prefix", "endpoint", "model_requested",
    "stream", "max_tokens_requested", "max_tokens_applied", "price_snapshot_id", "started_at", "user_agent",
)  # fmt: skip
PENDING_CONSTANTS = {
    "route_id": "NULL", "provider": "''", "upstream_model": "''", "status": "NULL", "error_class": "''",
    "error_code": "''", "error_message": "''", "input_tokens": "0", "output_tokens": "0",
    "cached_input_tokens": "0", "cache_write_tokens": "0", "reasoning_tokens": "0", "image_count": "0",
    "tokens_estimated": "false", "cost_usd": "0", "billing_result": "'pending'", "output_reached_client": "false",
    "client_disconnected_at": "NULL", "first_byte_at": "NULL", "finished_at": "NULL", "attempts": "'[]'::jsonb",
}  # fmt: skip
assert set(STARTING_COLUMNS) | set(PENDING_CONSTANTS) == set(COLUMNS)

# Reserve the maximum cost and open the pending usage row, or do neither.
#
# This one commit does not wait for its WAL flush (synchronous_commit off for this transaction
# only): the settle that follows is a durable commit, and WAL is flushed in order, so once the
# settle returns the reserve is durable too. Only a database crash in between can lose a
# reserve; the settle then finds no pending row and writes the row as not billed
# (RECORD_LOST_RESERVE) — the customer is never charged without a hold. This halves the time the
# account row stays locked per request and takes a disk flush off the time to first byte.
RESERVE_WITH_USAGE = f"""
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)),
{RESERVE_CTE}, usage AS (
    INSERT INTO usage_usagerecord ({", ".join(STARTING_COLUMNS)}, {", ".join(PENDING_CONSTANTS)}, hold_id)
    SELECT {", ".join(f"%({c})s" for c in STARTING_COLUMNS)}, {", ".join(PENDING_CONSTANTS.values())}, hold.id
      FROM hold
 RETURNING id
)
SELECT hold.id FROM hold, usage, cfg
"""

FINAL_COLUMNS = (
    "route_id", "provider", "upstream_model", "status", "error_class", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "image_count", "tokens_estimated", "output_reached_client", "client_disconnected_at",
    "first_byte_at", "finished_at", "attempts",
)  # fmt: skip

_SETS = ",\n       ".join(f"{c} = %(attempts)s::jsonb" if c == "attempts" else f"{c} = %({c})s" for c in FINAL_COLUMNS)

# Settle the hold and finish the usage row in one statement. A replay finds neither an open hold
# nor a pending row and changes nothing. cost_usd is what the ledger actually charged.
SETTLE_WITH_USAGE = f"""
WITH {SETTLE_CTE}, usage AS (
    UPDATE usage_usagerecord
       SET {_SETS},
           cost_usd = COALESCE((SELECT settled_amount FROM h), 0),
           billing_result = CASE WHEN COALESCE((SELECT settled_amount FROM h), 0) = 0 AND %(billing_result)s <> 'billed'
                                 THEN 'not_billed' ELSE %(billing_result)s END
     WHERE request_id = %(request_id)s AND billing_result = 'pending'
 RETURNING cost_usd
)
SELECT (SELECT cost_usd FROM usage), (SELECT id FROM entry)
"""

# The sweeper: release a hold whose request died (process killed) and finish its usage row.
SWEEP_HOLD = f"""
WITH {SETTLE_CTE}, usage AS (
    UPDATE usage_usagerecord
       SET billing_result = 'not_billed', cost_usd = 0, status = COALESCE(status, 500),
           error_class = 'upstream_or_platform_error', error_code = 'interrupted',
           error_message = 'The request was interrupted (gateway process stopped); its hold was released.',
           finished_at = now()
     WHERE hold_id = %(hold_id)s AND billing_result = 'pending'
 RETURNING id
)
SELECT (SELECT id FROM h), (SELECT id FROM usage)
"""
