"""Monthly invoices and reconciliation (issue 13, items 2 and 3; CONTRACT §6): lines per model,
endpoint and billing result with exact costs rounded once to the cent, balances from the ledger,
the same invoice when built again, final for good, late entries in the next invoice (never lost,
never twice), XLSX and CSV that say the same to the last digit, and a reconciliation that finds
nothing wrong until something is."""

from __future__ import annotations

import csv
import io
import itertools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openpyxl
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum

from billing import invoice_files, invoices, services
from billing.models import Account, Invoice, InvoiceEntry, InvoiceLine, LedgerEntry
from billing.reconcile import reconcile
from billing.selectors import price_snapshot_current
from tests.api.test_usage import make_row
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db

_ids = itertools.count(1)
NOW = datetime.now(UTC)
THIS_MONTH = invoices.month_start(NOW)
NEXT_MONTH = invoices.next_month(THIS_MONTH)
AFTER_NEXT = invoices.next_month(NEXT_MONTH)


@pytest.fixture
def snapshots(db):
    return {
        name: price_snapshot_current(make_visible_model(CatalogModelFactory(name=name)))
        for name in ("gpt-5", "claude-sonnet-4-6")
    }


def charge(account, *, cost: str, model="gpt-5", endpoint="/v1/chat/completions", result="billed", snapshot=None,
           **tokens) -> UsageRecord:  # fmt: skip
    """One request as the gateway bills it: a hold, its usage row, the settle's ledger charge."""
    request_id = f"req_inv_{next(_ids):08d}"
    amount = Decimal(cost)
    hold_id = services.hold_reserve(account_id=account.pk, request_id=request_id, amount=amount + Decimal("0.5"))
    row = make_row(account, request_id=request_id, model_requested=model, endpoint=endpoint, billing_result=result,
                   cost_usd=amount, hold_id=hold_id, price_snapshot=snapshot, **tokens)  # fmt: skip
    settled = services.hold_settle(hold_id=hold_id, cost=amount)
    assert settled.charged == amount
    return row


def month_of(account, snapshots) -> list[UsageRecord]:
    gpt, claude = snapshots["gpt-5"], snapshots["claude-sonnet-4-6"]
    return [
        charge(account, cost="0.000012500001", snapshot=gpt, input_tokens=10, output_tokens=0),
        charge(account, cost="0.004999999999", snapshot=gpt, input_tokens=1000, output_tokens=300, reasoning_tokens=50),
        charge(account, cost="0.000000020000", snapshot=gpt, endpoint="/v1/responses", input_tokens=1),
        charge(account, cost="0.002500000000", snapshot=gpt, result="failed_but_billable", output_tokens=250),
        charge(account, cost="0.015000000000", model="claude-sonnet-4-6", endpoint="/v1/messages",
               snapshot=claude, input_tokens=2000, cached_input_tokens=500, cache_write_tokens=100),
        charge(account, cost="0.005000000000", model="claude-sonnet-4-6", endpoint="/v1/messages",
               snapshot=claude, input_tokens=1000),
    ]  # fmt: skip


def test_lines_totals_and_balances_agree_with_the_rows_to_the_last_digit(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    rows = month_of(account, snapshots)
    services.ledger_post(account_id=account.pk, kind="topup", amount="5.25", idempotency_key="inv-topup-1")
    services.ledger_post(account_id=account.pk, kind="refund", amount="0.0025", idempotency_key="inv-refund-1")
    services.ledger_post(account_id=account.pk, kind="adjustment", amount="-0.01", idempotency_key="inv-adj-1")
    built = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
    assert built.created
    invoice = built.invoice
    gpt, claude = snapshots["gpt-5"].pk, snapshots["claude-sonnet-4-6"].pk
    lines = [
        (line.model, line.endpoint, line.billing_result, line.requests, line.input_tokens, line.output_tokens,
         line.cached_input_tokens, line.cache_write_tokens, line.reasoning_tokens, line.cost, line.amount,
         line.price_snapshot_ids)
        for line in invoice.lines.all()
    ]  # fmt: skip
    assert lines == [
        ("claude-sonnet-4-6", "/v1/messages", "billed", 2, 3000, 0, 500, 100, 0,
         Decimal("0.020000000000"), Decimal("0.02"), [claude]),
        ("gpt-5", "/v1/chat/completions", "billed", 2, 1010, 300, 0, 0, 50,
         Decimal("0.005012500000"), Decimal("0.01"), [gpt]),
        ("gpt-5", "/v1/chat/completions", "failed_but_billable", 1, 0, 250, 0, 0, 0,
         Decimal("0.002500000000"), Decimal("0.00"), [gpt]),
        ("gpt-5", "/v1/responses", "billed", 1, 1, 0, 0, 0, 0,
         Decimal("0.000000020000"), Decimal("0.00"), [gpt]),
    ]  # fmt: skip
    assert invoice.usage_exact == sum(row.cost_usd for row in rows) == Decimal("0.027512520000")
    assert invoice.total == Decimal("0.03")  # 0.02 + 0.01 + 0.00 + 0.00: each line rounded once
    assert (invoice.topups, invoice.refunds, invoice.adjustments) == (
        Decimal("15.25"),  # the opening credit and the top-up
        Decimal("0.0025"),
        Decimal("-0.01"),
    )
    assert invoice.opening_balance == 0
    account.refresh_from_db()
    assert (
        invoice.closing_balance
        == account.balance
        == Decimal("15.25") + Decimal("0.0025") - Decimal("0.01") - Decimal("0.027512520000")
    )
    assert invoice.entry_count == LedgerEntry.objects.filter(account=account).count() == 10
    assert invoice.number == f"OB-{THIS_MONTH:%Y%m}-{account.pk:06d}"
    assert reconcile(account_id=account.pk) == []


def test_half_even_rounding_of_a_line_is_once_on_its_exact_cost(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    for _ in range(3):  # 3 × 0.005 = 0.015 exactly: half-even rounds it to 0.02 (1 is odd); per row would be 0.03
        charge(account, cost="0.005", snapshot=snapshots["gpt-5"])
    charge(account, cost="0.025", model="claude-sonnet-4-6", snapshot=snapshots["claude-sonnet-4-6"])
    invoice = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH).invoice
    assert [(line.model, line.cost, line.amount) for line in invoice.lines.all()] == [
        ("claude-sonnet-4-6", Decimal("0.025"), Decimal("0.02")),  # half-even: to the even cent
        ("gpt-5", Decimal("0.015"), Decimal("0.02")),
    ]
    assert invoice.total == Decimal("0.04")


def test_building_again_returns_the_same_invoice_which_never_changes(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    month_of(account, snapshots)
    first = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
    again = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
    assert (first.created, again.created) == (True, False)
    assert again.invoice.pk == first.invoice.pk and again.invoice.total == first.invoice.total
    assert Invoice.objects.count() == 1
    for attempt in (
        lambda: Invoice.objects.filter(pk=first.invoice.pk).update(total=0),
        lambda: InvoiceLine.objects.filter(invoice=first.invoice).delete(),
        lambda: InvoiceEntry.objects.filter(invoice=first.invoice).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    # the same numbers from the command, for one account or all
    out = io.StringIO()
    call_command("invoice_build", "--month", f"{THIS_MONTH:%Y-%m}", "--account", str(account.pk), stdout=out)
    assert f"{first.invoice.number} exists" in out.getvalue()


def test_a_charge_committed_after_the_build_goes_to_the_next_invoice(snapshots):
    """A request in flight at midnight settles after it: its charge belongs to no closed invoice yet."""
    account = AccountFactory(credit=Decimal("10"))
    rows = month_of(account, snapshots)
    december = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH).invoice
    late = charge(account, cost="0.123456789012", snapshot=snapshots["gpt-5"])  # committed after the build
    january = invoices.invoice_build(account=account, month=NEXT_MONTH, now=AFTER_NEXT).invoice
    assert december.usage_exact == sum(row.cost_usd for row in rows)
    assert january.usage_exact == late.cost_usd and january.lines.get().requests == 1
    assert january.opening_balance == december.closing_balance
    account.refresh_from_db()
    assert january.closing_balance == account.balance
    covered = InvoiceEntry.objects.values("entry_id")
    assert covered.count() == LedgerEntry.objects.filter(account=account).count()  # every entry, once
    assert reconcile(account_id=account.pk) == []


def test_an_earlier_month_without_an_invoice_is_built_first(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    rows = month_of(account, snapshots)
    january = invoices.invoice_build(account=account, month=NEXT_MONTH, now=AFTER_NEXT).invoice
    december = Invoice.objects.get(account=account, period_start=THIS_MONTH)
    assert december.usage_exact == sum(row.cost_usd for row in rows)
    assert january.usage_exact == 0 and january.opening_balance == december.closing_balance


def test_a_month_not_over_has_no_invoice_yet(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    with pytest.raises(invoices.InvalidRequest, match="not over"):
        invoices.invoice_build(account=account, month=THIS_MONTH, now=NOW)
    assert not Invoice.objects.exists()
    assert invoices.parse_month("2026-11") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(invoices.InvalidRequest):
        invoices.parse_month("2026-13")


def test_every_account_with_entries_gets_its_invoice(snapshots):
    accounts = [AccountFactory(credit=Decimal("1")) for _ in range(3)]
    charge(accounts[0], cost="0.01", snapshot=snapshots["gpt-5"])
    built = invoices.invoices_build_month(month=THIS_MONTH, now=NEXT_MONTH)
    assert sorted(b.invoice.account_id for b in built) == sorted(a.pk for a in accounts)
    assert [b.created for b in invoices.invoices_build_month(month=THIS_MONTH, now=NEXT_MONTH)] == [False] * 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_builds_of_one_month_make_one_invoice(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    month_of(account, snapshots)
    barrier = threading.Barrier(4)
    numbers: list[tuple[str, bool]] = []

    def build() -> None:
        barrier.wait()
        built = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
        numbers.append((built.invoice.number, built.created))
        connection.close()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({number for number, _ in numbers}) == 1 and sorted(c for _, c in numbers) == [False] * 3 + [True]
    assert Invoice.objects.count() == 1 and InvoiceEntry.objects.count() == 7


def test_xlsx_and_csv_say_what_the_invoice_says(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    rows = month_of(account, snapshots)
    invoice = invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH).invoice
    book = openpyxl.load_workbook(io.BytesIO(invoice_files.as_xlsx(invoice)))
    assert book.sheetnames == ["Summary", "Lines", "Price snapshots"]
    summary = {name: value for name, value in book["Summary"].iter_rows(values_only=True)}
    assert summary["invoice"] == invoice.number
    assert Decimal(summary["usage_exact"]) == sum(row.cost_usd for row in rows)
    assert Decimal(summary["total"]) == invoice.total and Decimal(summary["closing_balance"]) == invoice.closing_balance
    sheet = list(book["Lines"].iter_rows(values_only=True))
    header, body, total = sheet[0], sheet[1:-1], sheet[-1]
    assert header == invoice_files.LINE_COLUMNS
    assert sum(Decimal(line[header.index("cost_usd_exact")]) for line in body) == invoice.usage_exact
    assert sum(Decimal(line[header.index("amount_usd")]) for line in body) == invoice.total
    assert total[0] == "total" and Decimal(total[header.index("amount_usd")]) == invoice.total
    assert sum(line[header.index("requests")] for line in body) == len(rows)
    snapshot_ids = {row[0] for row in list(book["Price snapshots"].iter_rows(values_only=True))[1:]}
    assert snapshot_ids == {s.pk for s in snapshots.values()}
    table = list(csv.reader(io.StringIO(invoice_files.as_csv(invoice).decode())))
    assert tuple(table[0]) == invoice_files.LINE_COLUMNS
    assert [Decimal(line[10]) for line in table[1:-1]] == [line.cost for line in invoice.lines.all()]
    assert table[-1][0] == "total" and Decimal(table[-1][11]) == invoice.total
    assert sum(int(line[3]) for line in table[1:-1]) == len(rows)


def test_reconcile_finds_nothing_then_every_kind_of_break(snapshots, capsys):
    account = AccountFactory(credit=Decimal("10"))
    rows = month_of(account, snapshots)
    invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
    assert reconcile() == []
    call_command("reconcile")  # exit status 0: no SystemExit
    assert "no differences" in capsys.readouterr().out
    # a ledger row written behind the services' back: the balance no longer is the sum
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_ledgerentry (account_id, kind, amount, balance_after, idempotency_key, reason,"
            " request_id, created_at) VALUES (%s, 'adjustment', 1, 0, 'broken-1', 'broken', '', now())",
            [account.pk],
        )
    # a usage row edited after its charge
    UsageRecord.objects.filter(pk=rows[0].pk).update(cost_usd=Decimal("0.5"))
    found = {difference.check for difference in reconcile(account_id=account.pk)}
    assert found == {"balance", "usage_charge", "invoice_usage_rows"}
    with pytest.raises(SystemExit) as exit_status:
        call_command("reconcile", "--account", str(account.pk))
    assert exit_status.value.code == 1
    output = capsys.readouterr()
    assert "balance: account" in output.out and "difference(s)" in output.err


def test_reconcile_sees_stale_holds_pending_rows_and_uncharged_rows(snapshots):
    account = AccountFactory(credit=Decimal("10"))
    hold_id = services.hold_reserve(account_id=account.pk, request_id="req_stale", amount=Decimal("0.1"))
    make_row(account, request_id="req_stale", billing_result="pending", hold_id=hold_id, status=None)
    assert reconcile(account_id=account.pk) == []  # in flight: fine
    later = datetime.now(UTC) + timedelta(days=1)
    assert {d.check for d in reconcile(account_id=account.pk, now=later)} == {"stale_hold"}
    services.hold_release(hold_id=hold_id)  # released, but its row left pending
    make_row(account, request_id="req_free", billing_result="billed", cost_usd=Decimal("0.2"))  # no charge
    assert {d.check for d in reconcile(account_id=account.pk)} == {"pending_row", "usage_uncharged"}
    total = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
    assert Account.objects.get(pk=account.pk).balance == total  # nothing here moved money wrongly
