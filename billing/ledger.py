"""The ledger rules for holds, as single SQL statements.

These statements are the one definition of how a hold moves money. The services (sync, ORM
connection) and the gateway's request path (async psycopg pool) both execute them, so there is no
second copy of the money logic. Each is one statement, hence atomic without an explicit
transaction, and safe under concurrency on PostgreSQL:

- RESERVE first locks its account rows (in id order), waiting for any concurrent reserve or
  settle of them; its conditional UPDATE then checks `available >= amount` against the latest
  committed row (READ COMMITTED re-evaluation), so two requests can never reserve the same credit.
- SETTLE flips the hold from `open` exactly once (a second settle, or a sweeper release racing
  it, finds no open hold and changes nothing), charges at most the held amount, and writes the
  usage ledger entry with the balance after it.

Placeholders are psycopg's named style, valid for Django's cursor and for psycopg directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# CTE fragments, composed into whole statements here and (with the usage rows) by the gateway.
# Both work on a set of requests, a relation `req` defined before them: one row per request here,
# several (of one or more accounts) when the gateway batches (usage/gateway/batch.py).
#
# A statement that touches several accounts locks their rows in id order before it changes any
# (`ACCOUNTS_LOCKED`, an InitPlan, so it runs first and whole): two statements can then never
# wait for each other in a cycle, whatever accounts their batches share.
ACCOUNTS_LOCKED = """ANY (ARRAY(
           SELECT l.id FROM billing_account l WHERE l.id = ANY (ARRAY(SELECT account_id FROM {source}))
            ORDER BY l.id FOR NO KEY UPDATE))"""

# `req` has (account_id, api_key_id, request_id, amount, ttl_seconds). Each account must cover the
# sum of its requests, or none of them is reserved.
RESERVE_CTE = f"""
want AS (
    SELECT account_id, sum(amount) AS amount FROM req GROUP BY account_id
), acc AS (
    UPDATE billing_account a
       SET reserved = a.reserved + want.amount
      FROM want
     WHERE a.id = {ACCOUNTS_LOCKED.format(source="want")}
       AND a.id = want.account_id
       AND a.status = 'active'
       AND a.balance + a.credit_limit - a.reserved >= want.amount
 RETURNING a.id
), hold AS (
    INSERT INTO billing_hold (account_id, api_key_id, request_id, amount, state, created_at, expires_at)
    SELECT acc.id, req.api_key_id, req.request_id, req.amount, 'open', now(),
           now() + make_interval(secs => req.ttl_seconds)
      FROM req JOIN acc ON acc.id = req.account_id
 RETURNING id, request_id
)"""

ONE_RESERVE = """req AS (
    SELECT %(account_id)s::bigint AS account_id, %(api_key_id)s::bigint AS api_key_id,
           %(request_id)s::text AS request_id, %(amount)s::numeric AS amount,
           %(ttl_seconds)s::integer AS ttl_seconds
)"""

RESERVE = f"WITH {ONE_RESERVE}, {RESERVE_CTE} SELECT id FROM hold"

# `req` has (hold_id, cost). Each hold still open is settled for its cost capped at its amount
# (CONTRACT §3: a hold is settled for at most its amount); each account is updated once by the
# sums; each charge gets a ledger entry whose balance_after is the running balance (entries of
# one statement in hold order: the last one carries the account's new balance). The `= ANY (ARRAY(
# SELECT ...))` makes the holds' primary key the access path whatever the planner believes about
# `req` or the table's size (a generic plan made on a young table once scanned every hold).
SETTLE_CTE = f"""
h AS (
    UPDATE billing_hold b
       SET state = CASE WHEN LEAST(req.cost, b.amount) > 0 THEN 'settled' ELSE 'released' END,
           settled_amount = LEAST(req.cost, b.amount),
           resolved_at = now()
      FROM req
     WHERE b.id = ANY (ARRAY(SELECT hold_id FROM req)) AND b.id = req.hold_id AND b.state = 'open'
 RETURNING b.id, b.account_id, b.amount, b.settled_amount, b.request_id
), total AS (
    SELECT account_id, sum(amount) AS amount, sum(settled_amount) AS settled FROM h GROUP BY account_id
), acc AS (
    UPDATE billing_account a
       SET reserved = a.reserved - total.amount,
           balance = a.balance - total.settled
      FROM total
     WHERE a.id = {ACCOUNTS_LOCKED.format(source="total")}
       AND a.id = total.account_id
 RETURNING a.id, a.balance
), entry AS (
    INSERT INTO billing_ledgerentry
           (account_id, kind, amount, balance_after, idempotency_key, reason, hold_id, request_id, created_at)
    SELECT acc.id, 'usage', -h.settled_amount,
           acc.balance + COALESCE(sum(h.settled_amount) OVER (
               PARTITION BY h.account_id ORDER BY h.id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0),
           'usage:' || h.request_id, '', h.id, h.request_id, now()
      FROM h JOIN acc ON acc.id = h.account_id
     WHERE h.settled_amount > 0
     ORDER BY h.id
 RETURNING id
)"""

ONE_SETTLE = "req AS (SELECT %(hold_id)s::bigint AS hold_id, %(cost)s::numeric AS cost)"

SETTLE = f"WITH {ONE_SETTLE}, {SETTLE_CTE} SELECT h.settled_amount, (SELECT id FROM entry) FROM h"

# A request still alive (a long stream) pushes its hold's expiry forward, so that the sweeper
# only ever releases holds whose request died. Touches the hold row only, never the account's.
EXTEND_HOLD = """
UPDATE billing_hold
   SET expires_at = now() + make_interval(secs => %(ttl_seconds)s)
 WHERE id = %(hold_id)s AND state = 'open'
"""

# Holds whose request died (process killed) are released after their expiry (unresolved = open,
# a constraint of the table; the index hold_unresolved_expiry serves this).
EXPIRED_HOLDS = """
SELECT id FROM billing_hold
 WHERE resolved_at IS NULL AND expires_at < now()
 ORDER BY expires_at
 LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class SettleResult:
    """What a settle did. `resolved` is False when the hold was already resolved (a replay)."""

    resolved: bool
    charged: Decimal
    entry_id: int | None


def reserve_params(
    *, account_id: int, api_key_id: int | None, request_id: str, amount: Decimal, ttl_seconds: int
) -> dict:
    return {
        "account_id": account_id,
        "api_key_id": api_key_id,
        "request_id": request_id,
        "amount": amount,
        "ttl_seconds": ttl_seconds,
    }


def settle_result(row: tuple | None) -> SettleResult:
    if row is None:
        return SettleResult(resolved=False, charged=Decimal(0), entry_id=None)
    return SettleResult(resolved=True, charged=row[0], entry_id=row[1])
