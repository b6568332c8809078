"""Monthly invoices (CONTRACT §6): built once per account and calendar month (UTC), then final.

An invoice covers ledger entries: every entry of the account written before the month's end that
no earlier invoice covers (InvoiceEntry: one invoice per entry, by primary key). The coverage is
taken in one INSERT … SELECT; an entry that commits after it — a request in flight at midnight
settles after it, with a later timestamp, or a settle that waited in the outbox — is not covered
yet and goes to the next invoice. So every entry lands in exactly one invoice.

Usage lines group the covered usage charges by the model and endpoint of their request (its usage
row), one line per billing result; each line's exact cost is the ledger's charges, rounded to the
cent once (billing.money.to_cents); the total is the sum of the rounded lines. The balances come
from the covered entries: closing = opening + every covered entry, opening = the previous
invoice's closing. Building again returns the same invoice; months are built in order (an earlier
month without an invoice is built first), so a late entry is never swept back into the past.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Exists, Min, OuterRef
from django.utils import timezone

from billing import money
from billing.models import Account, Invoice, InvoiceLine, LedgerEntry
from openbili.core.errors import InvalidRequest

log = logging.getLogger("openbili.billing")

LOCK = 0x0B1_1A01  # with the account id: pg_advisory_xact_lock(LOCK, account) — one build at a time

COVER = """
INSERT INTO billing_invoiceentry (invoice_id, entry_id)
SELECT %(invoice)s, e.id
  FROM billing_ledgerentry e
 WHERE e.account_id = %(account)s AND e.created_at < %(end)s
   AND NOT EXISTS (SELECT 1 FROM billing_invoiceentry c WHERE c.entry_id = e.id)
"""

BY_KIND = """
SELECT e.kind, count(*), coalesce(sum(e.amount), 0)
  FROM billing_invoiceentry c JOIN billing_ledgerentry e ON e.id = c.entry_id
 WHERE c.invoice_id = %(invoice)s
 GROUP BY e.kind
"""

# A usage entry's request is its usage row (unique request_id); an entry whose row is gone
# (archived) still counts, on a line of its own.
LINES = """
SELECT coalesce(u.model_requested, '(unknown)'), coalesce(u.endpoint, ''),
       coalesce(nullif(u.billing_result, ''), 'billed'),
       count(*), coalesce(sum(u.input_tokens), 0), coalesce(sum(u.output_tokens), 0),
       coalesce(sum(u.cached_input_tokens), 0), coalesce(sum(u.cache_write_tokens), 0),
       coalesce(sum(u.reasoning_tokens), 0), coalesce(sum(u.image_count), 0),
       -sum(e.amount),
       coalesce(array_agg(DISTINCT u.price_snapshot_id) FILTER (WHERE u.price_snapshot_id IS NOT NULL), '{}')
  FROM billing_invoiceentry c
  JOIN billing_ledgerentry e ON e.id = c.entry_id
  LEFT JOIN usage_usagerecord u ON u.request_id = e.request_id
 WHERE c.invoice_id = %(invoice)s AND e.kind = 'usage'
 GROUP BY 1, 2, 3
 ORDER BY 1, 2, 3
"""


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def previous_month(start: datetime) -> datetime:
    return start.replace(year=start.year - 1, month=12) if start.month == 1 else start.replace(month=start.month - 1)


def parse_month(text: str) -> datetime:
    """'2026-11' → 2026-11-01T00:00Z; anything else is an InvalidRequest naming `month`."""
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(f"not a month (YYYY-MM): {text!r}", param="month") from None


@dataclass(frozen=True, slots=True)
class Built:
    invoice: Invoice
    created: bool


def _build_one(account: Account, start: datetime) -> Built:
    end = next_month(start)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK, account.pk])
        existing = Invoice.objects.filter(account=account, period_start=start).first()
        if existing is not None:
            return Built(existing, False)
        previous = Invoice.objects.filter(account=account, period_start__lt=start).order_by("-period_start").first()
        opening = previous.closing_balance if previous else money.ZERO
        # The invoice is written last, whole (its table is append-only): its id comes first, the
        # coverage and lines point at it, and the foreign keys are checked at commit (Django's
        # PostgreSQL foreign keys are DEFERRABLE INITIALLY DEFERRED).
        cursor.execute("SELECT nextval(pg_get_serial_sequence('billing_invoice', 'id'))")
        (invoice_id,) = cursor.fetchone()
        cursor.execute(COVER, {"invoice": invoice_id, "account": account.pk, "end": end})
        by_kind = {kind: (count, amount) for kind, count, amount in _rows(cursor, BY_KIND, invoice_id)}
        lines = [
            InvoiceLine(
                invoice_id=invoice_id, model=model, endpoint=endpoint, billing_result=result, requests=requests,
                input_tokens=inp, output_tokens=out, cached_input_tokens=cached, cache_write_tokens=cache_write,
                reasoning_tokens=reasoning, image_count=images, cost=cost, amount=money.to_cents(cost),
                price_snapshot_ids=sorted(snapshots),
            )
            for (model, endpoint, result, requests, inp, out, cached, cache_write, reasoning, images, cost, snapshots)
            in _rows(cursor, LINES, invoice_id)
        ]  # fmt: skip

        def of(kind: str) -> Decimal:
            return by_kind.get(kind, (0, money.ZERO))[1]

        usage_exact = sum((line.cost for line in lines), money.ZERO)
        assert usage_exact == -of(LedgerEntry.Kind.USAGE), "every usage entry is on a line"
        invoice = Invoice.objects.create(
            pk=invoice_id,
            account=account,
            number=f"OB-{start:%Y%m}-{account.pk:06d}",
            period_start=start,
            period_end=end,
            opening_balance=opening,
            topups=of(LedgerEntry.Kind.TOPUP),
            refunds=of(LedgerEntry.Kind.REFUND),
            adjustments=of(LedgerEntry.Kind.ADJUSTMENT),
            usage_exact=usage_exact,
            total=sum((line.amount for line in lines), money.ZERO),
            closing_balance=opening + sum((amount for _, amount in by_kind.values()), money.ZERO),
            entry_count=sum(count for count, _ in by_kind.values()),
        )
        InvoiceLine.objects.bulk_create(lines)
    log.info("invoice %s built: %d entries, total %s USD", invoice.number, invoice.entry_count, invoice.total)
    return Built(invoice, True)


def _rows(cursor, sql: str, invoice_id: int) -> list[tuple]:
    cursor.execute(sql, {"invoice": invoice_id})
    return cursor.fetchall()


def invoice_build(*, account: Account, month: datetime, now: datetime | None = None) -> Built:
    """The account's invoice for `month` (its first instant, UTC), building any earlier month that
    has entries and no invoice first. The month must be over."""
    start = month_start(month)
    existing = Invoice.objects.filter(account=account, period_start=start).first()
    if existing is not None:
        return Built(existing, False)
    now = now or timezone.now()
    if next_month(start) > now:
        raise InvalidRequest(f"{start:%Y-%m} is not over yet: its invoice is built on the 1st", param="month")
    first_entry = LedgerEntry.objects.filter(account=account).aggregate(first=Min("created_at"))["first"]
    latest = Invoice.objects.filter(account=account).order_by("-period_start").first()
    cursor_month = next_month(latest.period_start) if latest else month_start(first_entry or start)
    while cursor_month < start:  # earlier months first, in order
        _build_one(account, cursor_month)
        cursor_month = next_month(cursor_month)
    return _build_one(account, start)


def invoices_build_month(*, month: datetime | None = None, now: datetime | None = None) -> list[Built]:
    """Every account's invoice for `month` (default: the month before now), e.g. from beat on the 1st."""
    now = now or timezone.now()
    start = month_start(month) if month else previous_month(month_start(now))
    return [invoice_build(account=account, month=start, now=now) for account in accounts_to_invoice(start)]


def accounts_to_invoice(start: datetime):
    """Accounts with any ledger entry before the month's end: one index probe each (ledger_account_time)."""
    earlier = LedgerEntry.objects.filter(account=OuterRef("pk"), created_at__lt=next_month(start))
    return Account.objects.filter(Exists(earlier)).order_by("pk")
