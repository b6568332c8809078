"""The ledger rules for holds, as single SQL statements.

These statements are the one definition of how a hold moves money. The services (sync, ORM
connection) and the gateway's request path (async psycopg pool) both execute them, so there is no
second copy of the money logic. Each is one statement, hence atomic without an explicit
transaction, and safe under concurrency on PostgreSQL:

- RESERVE takes the account row lock through its conditional UPDATE; a concurrent reserve waits,
  then re-checks `available >= amount` against the committed row (READ COMMITTED re-evaluation),
  so two requests can never reserve the same credit.
- SETTLE flips the hold from `open` exactly once (a second settle, or a sweeper release racing
  it, finds no open hold and changes nothing), charges at most the held amount, and writes the
  usage ledger entry with the balance after it.

Placeholders are psycopg's named style, valid for Django's cursor and for psycopg directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# CTE fragments, composed into whole statements here and (with the usage row) by the gateway.
RESERVE_CTE = """
acc AS (
    UPDATE billing_account
       SET reserved = reserved + %(amount)s
     WHERE id = %(account_id)s
       AND status = 'active'
       AND balance + credit_limit - reserved >= %(amount)s
 RETURNING id
), hold AS (
    INSERT INTO billing_hold (account_id, api_key_id, request_id, amount, state, created_at, expires_at)
    SELECT acc.id, %(api_key_id)s, %(request_id)s, %(amount)s, 'open', now(),
           now() + make_interval(secs => %(ttl_seconds)s)
      FROM acc
 RETURNING id
)"""

RESERVE = f"WITH {RESERVE_CTE} SELECT id FROM hold"

# `cost` is capped at the held amount (CONTRACT §3: a hold is settled for at most its amount).
SETTLE_CTE = """
h AS (
    UPDATE billing_hold
       SET state = CASE WHEN LEAST(%(cost)s::numeric, amount) > 0 THEN 'settled' ELSE 'released' END,
           settled_amount = LEAST(%(cost)s::numeric, amount),
           resolved_at = now()
     WHERE id = %(hold_id)s AND state = 'open'
 RETURNING id, account_id, amount, settled_amount, request_id
), acc AS (
    UPDATE billing_account a
       SET reserved = a.reserved - h.amount,
           balance = a.balance - h.settled_amount
      FROM h
     WHERE a.id = h.account_id
 RETURNING a.id, a.balance
), entry AS (
    INSERT INTO billing_ledgerentry
           (account_id, kind, amount, balance_after, idempotency_key, reason, hold_id, request_id, created_at)
    SELECT acc.id, 'usage', -h.settled_amount, acc.balance, 'usage:' || h.request_id, '', h.id,
           h.request_id, now()
      FROM h JOIN acc ON acc.id = h.account_id
     WHERE h.settled_amount > 0
 RETURNING id
)"""

SETTLE = f"WITH {SETTLE_CTE} SELECT h.settled_amount, (SELECT id FROM entry) FROM h"

# A request still alive (a long stream) pushes its hold's expiry forward, so that the sweeper
# only ever releases holds whose request died. Touches the hold row only, never the account's.
EXTEND_HOLD = """
UPDATE billing_hold
   SET expires_at = now() + make_interval(secs => %(ttl_seconds)s)
 WHERE id = %(hold_id)s AND state = 'open'
"""

# Holds whose request died (process killed) are released after their expiry.
EXPIRED_HOLDS = """
SELECT id FROM billing_hold
 WHERE state = 'open' AND expires_at < now()
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
