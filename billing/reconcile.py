"""Reconciliation (issue 13): the ledger, the usage rows and the invoices agree to the last digit.

Each check is one SQL statement over one account or all; each difference names the check, the
account and what differs. `manage.py reconcile` prints them and exits non-zero if there is any
(a deploy gate, a page); the nightly task logs them. Read-only: it never corrects anything —
corrections are new ledger entries, made by a person.

- balance: an account's balance is the sum of its ledger entries; reserved, the sum of its open holds.
- usage: each usage charge in the ledger is its request's usage row cost, and every charged row
  (billed / failed_but_billable with a cost) has its one charge. Rows of archived months are gone
  (usage/archive.py): an account's charges that have no row add up to, in count and amount, the
  charged rows its archives recorded (usage_archived), and an invoice's archived rows count at
  the cost its archives recorded for it.
- invoices: total = sum of its rounded lines; usage_exact = sum of the lines' exact costs = the
  usage rows of the charges it covers; closing = opening + its entries; opening = the previous
  invoice's closing.
- holds: none open past its expiry plus the sweeper's grace (no request lives that long).
- rows: none pending once its hold is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

SWEEPER_GRACE = timedelta(minutes=10)  # the sweeper runs every minute; a hold this late is a fault
LIMIT = 50  # differences listed per check (the count is always whole)


@dataclass(frozen=True, slots=True)
class Difference:
    check: str
    account_id: int | None
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: account {self.account_id}: {self.detail}"


CHECKS: dict[str, str] = {
    "balance": """
        SELECT a.id, format('balance %%s, ledger sum %%s', a.balance, coalesce(e.total, 0))
          FROM billing_account a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM billing_ledgerentry GROUP BY account_id) e
            ON e.account_id = a.id
         WHERE a.balance <> coalesce(e.total, 0) AND (%(account)s::bigint IS NULL OR a.id = %(account)s)
    """,
    "reserved": """
        SELECT a.id, format('reserved %%s, open holds %%s', a.reserved, coalesce(h.total, 0))
          FROM billing_account a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM billing_hold
                      WHERE resolved_at IS NULL GROUP BY account_id) h ON h.account_id = a.id
         WHERE a.reserved <> coalesce(h.total, 0) AND (%(account)s::bigint IS NULL OR a.id = %(account)s)
    """,
    "usage_charge": """
        SELECT e.account_id, format('request %%s charged %%s, its usage row says %%s',
                                    e.request_id, -e.amount, coalesce(u.cost_usd::text, 'nothing (no row)'))
          FROM billing_ledgerentry e
          LEFT JOIN usage_usagerecord u ON u.request_id = e.request_id
         WHERE e.kind = 'usage' AND (u.id IS NULL OR u.cost_usd <> -e.amount OR u.account_id <> e.account_id)
           AND NOT (u.id IS NULL AND e.account_id IN (SELECT account_id FROM archived_accounts))
           AND (%(account)s::bigint IS NULL OR e.account_id = %(account)s)
    """,
    "usage_archived": """
        SELECT m.account_id, format('%%s usage charge(s) (%%s USD) have no usage row; its archived months '
                                    'hold %%s charged row(s) (%%s USD)',
                                    coalesce(l.n, 0), coalesce(l.usd, 0), m.n, m.usd)
          FROM (SELECT account_id, sum(charged_rows) AS n, sum(charged_usd) AS usd FROM archived_accounts
                 GROUP BY 1) m
          LEFT JOIN (SELECT e.account_id, count(*) AS n, -sum(e.amount) AS usd
                       FROM billing_ledgerentry e
                      WHERE e.kind = 'usage'
                        AND NOT EXISTS (SELECT 1 FROM usage_usagerecord u WHERE u.request_id = e.request_id)
                      GROUP BY 1) l ON l.account_id = m.account_id
         WHERE (coalesce(l.n, 0) <> m.n OR coalesce(l.usd, 0) <> m.usd)
           AND (%(account)s::bigint IS NULL OR m.account_id = %(account)s)
    """,
    "usage_uncharged": """
        SELECT u.account_id, format('request %%s costs %%s (%%s) and has no charge in the ledger',
                                    u.request_id, u.cost_usd, u.billing_result)
          FROM usage_usagerecord u
         WHERE u.cost_usd > 0 AND u.billing_result IN ('billed', 'failed_but_billable')
           AND NOT EXISTS (SELECT 1 FROM billing_ledgerentry e
                            WHERE e.idempotency_key = 'usage:' || u.request_id)
           AND (%(account)s::bigint IS NULL OR u.account_id = %(account)s)
    """,
    "invoice_lines": """
        SELECT i.account_id, format('invoice %%s: total %%s, lines %%s; usage %%s, lines'' exact %%s',
                                    i.number, i.total, coalesce(l.amount, 0), i.usage_exact, coalesce(l.cost, 0))
          FROM billing_invoice i
          LEFT JOIN (SELECT invoice_id, sum(amount) AS amount, sum(cost) AS cost FROM billing_invoiceline
                      GROUP BY invoice_id) l ON l.invoice_id = i.id
         WHERE (i.total <> coalesce(l.amount, 0) OR i.usage_exact <> coalesce(l.cost, 0))
           AND (%(account)s::bigint IS NULL OR i.account_id = %(account)s)
    """,
    "invoice_usage_rows": """
        SELECT i.account_id, format('invoice %%s: usage %%s, its requests'' usage rows %%s (archived: %%s)',
                                    i.number, i.usage_exact, coalesce(r.cost, 0), coalesce(z.cost, 0))
          FROM billing_invoice i
          LEFT JOIN (SELECT c.invoice_id, sum(u.cost_usd) AS cost
                       FROM billing_invoiceentry c
                       JOIN billing_ledgerentry e ON e.id = c.entry_id AND e.kind = 'usage'
                       JOIN usage_usagerecord u ON u.request_id = e.request_id
                      GROUP BY c.invoice_id) r ON r.invoice_id = i.id
          LEFT JOIN (SELECT v.key::bigint AS invoice_id, sum(v.value::numeric) AS cost
                       FROM usage_usagearchive a, jsonb_each_text(a.invoices) v
                      WHERE a.status = 'dropped' GROUP BY 1) z ON z.invoice_id = i.id
         WHERE i.usage_exact <> coalesce(r.cost, 0) + coalesce(z.cost, 0)
           AND (%(account)s::bigint IS NULL OR i.account_id = %(account)s)
    """,
    "invoice_balances": """
        SELECT i.account_id, format('invoice %%s: opening %%s + entries %%s, closing %%s; previous closing %%s',
                                    i.number, i.opening_balance, coalesce(m.moved, 0), i.closing_balance,
                                    coalesce(p.closing_balance, 0))
          FROM billing_invoice i
          LEFT JOIN (SELECT c.invoice_id, sum(e.amount) AS moved
                       FROM billing_invoiceentry c JOIN billing_ledgerentry e ON e.id = c.entry_id
                      GROUP BY c.invoice_id) m ON m.invoice_id = i.id
          LEFT JOIN LATERAL (SELECT closing_balance FROM billing_invoice q
                              WHERE q.account_id = i.account_id AND q.period_start < i.period_start
                              ORDER BY q.period_start DESC LIMIT 1) p ON true
         WHERE (i.closing_balance <> i.opening_balance + coalesce(m.moved, 0)
                OR i.opening_balance <> coalesce(p.closing_balance, 0))
           AND (%(account)s::bigint IS NULL OR i.account_id = %(account)s)
    """,
    "stale_hold": """
        SELECT h.account_id, format('hold %%s of request %%s (%%s USD) open since %%s, expired %%s',
                                    h.id, h.request_id, h.amount, h.created_at, h.expires_at)
          FROM billing_hold h
         WHERE h.resolved_at IS NULL AND h.expires_at < %(stale)s
           AND (%(account)s::bigint IS NULL OR h.account_id = %(account)s)
    """,
    "pending_row": """
        SELECT u.account_id, format('request %%s still pending, its hold %%s', u.request_id,
                                    coalesce(h.state, 'missing'))
          FROM usage_usagerecord u
          LEFT JOIN billing_hold h ON h.id = u.hold_id
         WHERE u.billing_result = 'pending' AND (h.id IS NULL OR h.resolved_at IS NOT NULL)
           AND (%(account)s::bigint IS NULL OR u.account_id = %(account)s)
    """,
}


# What the archived months' manifests (usage.UsageArchive, dropped) recorded per account.
ARCHIVED = """
WITH archived_accounts AS (
    SELECT v.key::bigint AS account_id, (v.value->>'charged_rows')::bigint AS charged_rows,
           (v.value->>'charged_usd')::numeric AS charged_usd
      FROM usage_usagearchive a, jsonb_each(a.accounts) v
     WHERE a.status = 'dropped' AND v.key <> ''
)
"""


def reconcile(*, account_id: int | None = None, now: datetime | None = None) -> list[Difference]:
    """Every difference found, check by check (at most LIMIT listed per check, then a count)."""
    now = now or timezone.now()
    params = {"account": account_id, "stale": now - SWEEPER_GRACE}
    found: list[Difference] = []
    with connection.cursor() as cursor:
        for check, sql in CHECKS.items():
            cursor.execute(f"{ARCHIVED} SELECT count(*) OVER (), q.* FROM ({sql}) q LIMIT {LIMIT}", params)  # noqa: S608
            rows = cursor.fetchall()
            found += [Difference(check, account, detail) for _, account, detail in rows]
            if rows and rows[0][0] > LIMIT:
                found.append(Difference(check, None, f"... and {rows[0][0] - LIMIT} more"))
    return found
