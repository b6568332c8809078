"""Monthly invoices through a real Celery worker (issue 13, Done when): beat's task fans out one
build per account, the worker builds them against PostgreSQL, a second run changes nothing, and
the reconciliation finds no difference afterwards."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.db import connection, transaction

from billing import invoices, tasks
from billing.models import Invoice, LedgerEntry
from billing.reconcile import reconcile
from billing.selectors import price_snapshot_current
from tests.billing.test_invoices import charge
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model


def age_ledger(by: timedelta) -> None:
    """Move every ledger entry `by` into the past, as if written last month: the append-only trigger
    is lifted for this one committed statement of test set-up, and restored before anything else."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_ledgerentry_append_only")
        cursor.execute("UPDATE billing_ledgerentry SET created_at = created_at - %s", [by])
        cursor.execute("ALTER TABLE billing_ledgerentry ENABLE TRIGGER billing_ledgerentry_append_only")


def test_the_monthly_task_builds_each_accounts_invoice_once_in_a_real_worker(celery_worker):
    snapshot = price_snapshot_current(make_visible_model(CatalogModelFactory(name="gpt-5")))
    accounts = [AccountFactory(credit=Decimal("20")) for _ in range(2)]
    rows = {
        account.pk: [
            charge(account, cost=f"0.00{i}00000000{i}", snapshot=snapshot, input_tokens=i) for i in range(1, 6)
        ]
        for account in accounts
    }
    this_month = invoices.month_start(LedgerEntry.objects.latest("created_at").created_at)
    last_month = invoices.previous_month(this_month)
    age_ledger(this_month - last_month)
    tasks.invoices_monthly.delay(f"{last_month:%Y-%m}")  # through Redis to the worker
    celery_worker.wait_for(lambda: Invoice.objects.count() == 2, what="both invoices")
    for account in accounts:
        invoice = Invoice.objects.get(account=account)
        assert invoice.period_start == last_month
        assert invoice.usage_exact == sum(row.cost_usd for row in rows[account.pk])
        assert invoice.total == sum(line.amount for line in invoice.lines.all())
        account.refresh_from_db()
        assert invoice.closing_balance == account.balance
    first = {i.pk: (i.number, i.total, i.usage_exact) for i in Invoice.objects.all()}
    tasks.invoices_monthly.delay(f"{last_month:%Y-%m}")  # again: the same invoices, not two more
    celery_worker.wait_for(
        lambda: celery_worker.log().count("billing.tasks.invoice_build[") >= 8, what="the second run's builds"
    )
    assert {i.pk: (i.number, i.total, i.usage_exact) for i in Invoice.objects.all()} == first
    assert reconcile() == []
