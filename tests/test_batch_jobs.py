"""Issue 13's "Done when" in one story, through a real Celery worker on PostgreSQL and Redis: a
month of charged requests; their XLSX export, with the worker killed in the middle of it, finished
by the next worker in one correct file; the monthly invoice built by the worker; and a
reconciliation that finds no difference after all of that — until a ledger row is broken on
purpose, when `manage.py reconcile` exits non-zero."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from billing import invoices, tasks
from billing.models import Invoice, LedgerEntry
from billing.reconcile import reconcile
from billing.selectors import price_snapshot_current
from tests.billing.test_invoice_worker import age_ledger
from tests.billing.test_invoices import charge
from tests.celery_worker import VISIBILITY_TIMEOUT
from tests.exports.conftest import files_of, read_export, totals
from tests.exports.test_worker import restart, shared_storage  # noqa: F401 - fixture
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from usage import exports
from usage.models import UsageExport, UsageRecord


def test_export_killed_mid_way_invoice_and_reconciliation_agree_to_the_last_digit(celery_worker, shared_storage):  # noqa: F811
    snapshot = price_snapshot_current(make_visible_model(CatalogModelFactory(name="gpt-5")))
    account = AccountFactory(credit=Decimal("50"))
    rows = [
        charge(account, cost=f"0.{i:04d}{i:08d}", snapshot=snapshot, input_tokens=i, output_tokens=2 * i)
        for i in range(1, 301)
    ]
    this_month = invoices.month_start(LedgerEntry.objects.latest("created_at").created_at)
    last_month = invoices.previous_month(this_month)
    age_ledger(this_month - last_month)

    # the export, its worker killed once rows are under way
    restart(celery_worker, OPENBILI_EXPORT_CHUNK_ROWS="3")
    export = exports.export_create(account=account, user=None, format="xlsx", filters={})
    celery_worker.wait_for(lambda: UsageExport.objects.get(pk=export.pk).rows_done > 0, what="the export under way")
    celery_worker.kill()
    assert UsageExport.objects.get(pk=export.pk).status == UsageExport.Status.RUNNING
    time.sleep(VISIBILITY_TIMEOUT + 1)
    celery_worker.start()
    celery_worker.wait_for(
        lambda: UsageExport.objects.get(pk=export.pk).status in ("done", "failed"), what="the export", timeout=120
    )
    done = UsageExport.objects.get(pk=export.pk)
    assert done.status == "done" and done.attempts >= 2, done.error
    _, written = read_export(done)
    assert files_of(shared_storage) == [shared_storage / done.file_name]
    exported = totals(written)
    assert exported["rows"] == len(rows)
    assert exported["cost_usd"] == sum(row.cost_usd for row in rows)

    # the month's invoice, by the worker
    tasks.invoices_monthly.delay(f"{last_month:%Y-%m}")
    celery_worker.wait_for(lambda: Invoice.objects.filter(account=account).exists(), what="the invoice")
    invoice = Invoice.objects.get(account=account)
    assert (
        invoice.usage_exact
        == exported["cost_usd"]
        == sum(UsageRecord.objects.filter(account=account).values_list("cost_usd", flat=True))
    )
    assert invoice.lines.get().requests == len(rows)

    # nothing disagrees; then a ledger row written behind the services' back
    assert reconcile() == []
    call_command("reconcile")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_ledgerentry (account_id, kind, amount, balance_after, idempotency_key, reason,"
            " request_id, created_at) VALUES (%s, 'topup', 1, 0, 'broken-on-purpose', '', '', now())",
            [account.pk],
        )
    with pytest.raises(SystemExit) as status:
        call_command("reconcile")
    assert status.value.code == 1
