"""The gateway's writes: the ledger statements of billing/ledger.py composed with the usage rows,
so a request costs two round trips to PostgreSQL (reserve + settle), each one atomic statement,
which requests of one account arriving together share (batch.py: one statement for all of them).
The requests of a batch travel as ONE jsonb parameter (a list of row objects, expanded by
jsonb_to_recordset), which costs less to send than a parameter per column."""

from __future__ import annotations

from billing.ledger import ONE_SETTLE, RESERVE_CTE, SETTLE_CTE

COLUMNS = (
    "request_id", "trace_id", "account_id", "api_key_id", "key_prefix", "endpoint", "model_requested",
    "route_id", "provider", "upstream_model", "stream", "status", "error_class", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "image_count", "tokens_estimated", "max_tokens_requested", "max_tokens_applied", "cost_usd", "uncharged_usd",
    "billing_result", "price_snapshot_id", "output_reached_client", "client_disconnected_at", "started_at",
    "first_byte_at", "finished_at", "attempts", "user_agent", "response_id",
)  # fmt: skip

# Types of the columns a batch sends (jsonb_to_recordset needs them spelled out).
TYPES = {
    "request_id": "text", "trace_id": "text", "account_id": "bigint", "api_key_id": "bigint", "key_prefix": "text",
    "endpoint": "text", "model_requested": "text", "route_id": "bigint", "provider": "text",
    "upstream_model": "text", "stream": "boolean", "status": "smallint", "error_class": "text",
    "error_code": "text", "error_message": "text", "input_tokens": "integer", "output_tokens": "integer",
    "cached_input_tokens": "integer", "cache_write_tokens": "integer", "reasoning_tokens": "integer",
    "image_count": "integer", "tokens_estimated": "boolean", "max_tokens_requested": "integer",
    "max_tokens_applied": "integer", "cost_usd": "numeric", "uncharged_usd": "numeric", "billing_result": "text",
    "price_snapshot_id": "bigint", "output_reached_client": "boolean", "client_disconnected_at": "timestamptz",
    "started_at": "timestamptz", "first_byte_at": "timestamptz", "finished_at": "timestamptz",
    "attempts": "text", "user_agent": "text", "response_id": "text",  # attempts: JSON, cast where written
    # not usage columns: what the ledger needs
    "amount": "numeric", "ttl_seconds": "integer", "hold_id": "bigint", "cost": "numeric",
}  # fmt: skip


def recordset(columns) -> str:
    """`req` from the %(rows)s parameter: a jsonb array of objects with these keys."""
    spec = ", ".join(f"{c} {TYPES[c]}" for c in columns)
    return f"req AS (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({spec}))"


def one_row(columns) -> str:
    """`req` as one row of parameters: a lone request (the usual case at low load) skips the JSON
    round trip, which costs PostgreSQL ~0.1 ms more per request (bench/README.md)."""
    return "req AS (SELECT " + ", ".join(f"%({c})s::{TYPES[c]} AS {c}" for c in columns) + ")"


_VALUES = ", ".join("%(attempts)s::jsonb" if c == "attempts" else f"%({c})s" for c in COLUMNS)

# A rejected request (no hold): one row, written once even if replayed. The table is partitioned
# by month of started_at, so its unique index is (request_id, started_at); a replay carries the
# same started_at, and the CHECK of migration 0010 keeps a time-carrying id from coming with
# another (usage/gateway/ids.py).
INSERT_USAGE = f"""
INSERT INTO usage_usagerecord ({", ".join(COLUMNS)})
VALUES ({_VALUES})
ON CONFLICT (request_id, started_at) DO NOTHING
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
    "tokens_estimated": "false", "cost_usd": "0", "uncharged_usd": "0", "billing_result": "'pending'", "output_reached_client": "false",
    "client_disconnected_at": "NULL", "first_byte_at": "NULL", "finished_at": "NULL", "attempts": "'[]'::jsonb",
    "response_id": "''",
}  # fmt: skip
assert set(STARTING_COLUMNS) | set(PENDING_CONSTANTS) == set(COLUMNS)

# Reserve the maximum cost of every request in %(rows)s (RESERVE_ONE: one request, its columns as
# parameters) and open their pending usage rows; an account that cannot cover all of its requests
# gets none of them. Returns (request_id, hold id) per request reserved.
#
# This one commit does not wait for its WAL flush (synchronous_commit off for this transaction
# only): the settle that follows is a durable commit, and WAL is flushed in order, so once the
# settle returns the reserve is durable too. Only a database crash in between can lose a
# reserve; the settle then finds no pending row and writes the row as not billed
# (record_lost_reserve) — the customer is never charged without a hold. This halves the time the
# account row stays locked per request and takes a disk flush off the time to first byte.
RESERVE_COLUMNS = (*STARTING_COLUMNS, "amount", "ttl_seconds")


def _reserve(req: str) -> str:
    return f"""
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)),
{req},
{RESERVE_CTE}, usage AS (
    INSERT INTO usage_usagerecord ({", ".join(STARTING_COLUMNS)}, {", ".join(PENDING_CONSTANTS)}, hold_id)
    SELECT {", ".join(f"req.{c}" for c in STARTING_COLUMNS)},
           {", ".join(PENDING_CONSTANTS.values())}, hold.id
      FROM req JOIN hold USING (request_id)
 RETURNING request_id
)
SELECT hold.request_id, hold.id FROM hold, cfg
"""


RESERVE_MANY = _reserve(recordset(RESERVE_COLUMNS))
RESERVE_ONE = _reserve(one_row(RESERVE_COLUMNS))

# What a settle sends of the row: the columns it finishes, and started_at, which is not changed but
# finds the row's partition (with request_id, the table's unique key): PostgreSQL then reads and
# locks one month's partition, not every month's (bench/usage_partitions.py).
FINAL_COLUMNS = (
    "route_id", "provider", "upstream_model", "status", "error_class", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "image_count", "tokens_estimated", "output_reached_client", "client_disconnected_at",
    "first_byte_at", "finished_at", "attempts", "response_id", "started_at",
)  # fmt: skip

# response_id may be absent from an item written before the column existed (the outbox): ''.
_SET = {"attempts": "attempts = req.attempts::jsonb", "response_id": "response_id = COALESCE(req.response_id, '')"}
_SETS = ",\n       ".join(_SET.get(c, f"{c} = req.{c}") for c in FINAL_COLUMNS if c != "started_at")
SETTLE_COLUMNS = ("request_id", "hold_id", "cost", "billing_result", *FINAL_COLUMNS)

# Settle the holds of %(rows)s (SETTLE_ONE: one request's, as parameters) and finish their usage
# rows, in one statement. A replay finds neither an open hold nor a pending row and changes
# nothing. cost_usd is what the ledger actually charged. Returns (request_id, cost_usd) per usage
# row finished.


def _settle(req: str, started_at: str) -> str:
    return f"""
WITH {req},
{SETTLE_CTE}, usage AS (
    UPDATE usage_usagerecord u
       SET {_SETS},
           cost_usd = COALESCE(h.settled_amount, 0),
           uncharged_usd = GREATEST(req.cost - COALESCE(h.settled_amount, 0), 0),
           billing_result = CASE WHEN COALESCE(h.settled_amount, 0) = 0 AND req.billing_result <> 'billed'
                                 THEN 'not_billed' ELSE req.billing_result END
      FROM req LEFT JOIN h ON h.request_id = req.request_id
     WHERE u.request_id = ANY (ARRAY(SELECT request_id FROM req)) AND u.request_id = req.request_id
       AND u.started_at {started_at} AND u.started_at = req.started_at
       AND u.billing_result = 'pending'
 RETURNING u.request_id, u.cost_usd
)
SELECT request_id, cost_usd FROM usage
"""


# The partitions to read, as the planner can see them: the lone settle's started_at is a parameter
# (a custom plan reads one partition, a generic plan prunes the others when it starts); a batch's
# come from `req`, so its plan prunes when it starts too (an InitPlan, like request_id's).
SETTLE_MANY = _settle(recordset(SETTLE_COLUMNS), "= ANY (ARRAY(SELECT started_at FROM req))")
SETTLE_ONE = _settle(one_row(SETTLE_COLUMNS), "= %(started_at)s::timestamptz")

# A stream that has been reaching its client for a while says so on its pending row, so that a
# row finished by the sweeper (the process was killed) still tells what the client saw. A row
# that says its started_at is found in its partition; one that does not, in every partition.
MARK_STREAMING = """
UPDATE usage_usagerecord u
   SET status = 200, first_byte_at = r.first_byte_at, output_reached_client = r.output_reached_client
  FROM jsonb_to_recordset(%(rows)s::jsonb)
       AS r(request_id text, started_at timestamptz, first_byte_at timestamptz, output_reached_client boolean)
 WHERE u.request_id = r.request_id AND u.started_at = COALESCE(r.started_at, u.started_at)
   AND u.billing_result = 'pending'
"""

# The sweeper: release a hold whose request died (process killed) and finish its usage row. A
# stream whose client had output (MARK_STREAMING) was interrupted as far as that client knows.
# By hold_id (usage_hold): one index probe per partition, off the request path.
SWEEP_HOLD = f"""
WITH {ONE_SETTLE}, {SETTLE_CTE}, usage AS (
    UPDATE usage_usagerecord
       SET billing_result = 'not_billed', cost_usd = 0, status = COALESCE(status, 500),
           error_class = CASE WHEN output_reached_client THEN 'stream_interrupted'
                              ELSE 'upstream_or_platform_error' END,
           error_code = 'interrupted',
           error_message = 'The request was interrupted (gateway process stopped); its hold was released.',
           finished_at = now()
     WHERE hold_id = %(hold_id)s AND billing_result = 'pending'
 RETURNING id
)
SELECT (SELECT id FROM h), (SELECT id FROM usage)
"""
