"""Archiving old months of usage rows (issue 15; usage/archive.py): a month is archived only once
invoiced and settled, never the current or previous one; its partition becomes a gzipped CSV
whose rows and sums are the month's, then is dropped; a rerun changes nothing, a crashed or
overtaken run finishes on the next; reconciliation still balances afterwards."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection

from billing import invoices, services
from billing.reconcile import reconcile
from tests.api.test_usage import make_row
from tests.billing.test_invoices import AFTER_NEXT, NEXT_MONTH, THIS_MONTH, charge, snapshots  # noqa: F401
from tests.exports.conftest import export_dir  # noqa: F401 - fixture: the exports storage on tmp_path
from tests.factories import AccountFactory
from usage import archive, partitions
from usage.models import UsageArchive, UsageRecord

pytestmark = pytest.mark.django_db

HERE = partitions.partition_name(THIS_MONTH)


def at(minutes: int):
    return THIS_MONTH + timedelta(minutes=minutes)  # this month, before now: the rows' partition exists


def exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


@pytest.fixture
def month(snapshots, export_dir):  # noqa: F811
    """Two accounts' month of charged rows, a free row and a row of no account, this month; each
    account's invoice for it built as if the month were over. Archived 'two months later'."""
    first, second = AccountFactory(credit=Decimal("10")), AccountFactory(credit=Decimal("5"))
    rows = [
        charge(first, cost="0.000012500001", snapshot=snapshots["gpt-5"], at=at(1)),
        charge(first, cost="0.004999999999", snapshot=snapshots["gpt-5"], at=at(2)),
        charge(second, cost="0.015000000000", model="claude-sonnet-4-6", at=at(3)),
        make_row(first, billing_result="not_billed", status=429, error_class="quota_or_rate_limit", at=at(4)),
        make_row(None, billing_result="not_billed", status=401, at=at(5)),
    ]
    for account in (first, second):
        invoices.invoice_build(account=account, month=THIS_MONTH, now=NEXT_MONTH)
    return {"accounts": (first, second), "rows": rows}


def run(**options) -> list[archive.Outcome]:
    return archive.usage_archive(before=NEXT_MONTH, now=AFTER_NEXT, **options)


def read_archive(name: str) -> list[dict]:
    with storages["openbili_exports"].open(name, "rb") as stored:
        return list(csv.DictReader(io.StringIO(gzip.decompress(stored.read()).decode())))


def test_an_invoiced_month_is_archived_to_csv_whose_rows_and_sums_are_the_months_then_dropped(month):
    assert reconcile() == []
    rows = month["rows"]
    [outcome] = run()
    assert outcome.action == "archived", outcome
    assert not exists(HERE)
    assert UsageRecord.objects.count() == 0
    manifest = UsageArchive.objects.get()
    assert (manifest.month, manifest.status, manifest.rows) == (THIS_MONTH, "dropped", 5)
    assert manifest.cost_usd == sum(row.cost_usd for row in rows) == Decimal("0.020012500000")
    first, _ = month["accounts"]
    assert manifest.accounts[str(first.pk)] == {
        "rows": 3, "cost_usd": "0.005012500000", "charged_rows": 2, "charged_usd": "0.005012500000",
    }  # fmt: skip
    assert manifest.accounts[""]["rows"] == 1
    written = read_archive(manifest.file_name)
    assert [r["request_id"] for r in written] == [row.request_id for row in sorted(rows, key=lambda r: r.pk)]
    assert sum(Decimal(r["cost_usd"]) for r in written) == manifest.cost_usd
    assert {r["started_at"][:7] for r in written} == {f"{THIS_MONTH:%Y-%m}"}
    with storages["openbili_exports"].open(manifest.file_name, "rb") as stored:
        import hashlib

        assert hashlib.sha256(stored.read()).hexdigest() == manifest.sha256
    # the ledger still balances: the charges of archived rows against the manifest
    assert reconcile() == []
    # a rerun changes nothing
    assert [o.action for o in run()] == ["already archived"]
    assert UsageArchive.objects.get().dropped_at == manifest.dropped_at


def test_reconcile_sees_an_archive_that_does_not_add_up(month):
    run()
    manifest = UsageArchive.objects.get()
    first, _ = month["accounts"]
    manifest.accounts[str(first.pk)]["charged_usd"] = "0.005"
    manifest.invoices = {key: "0" for key in manifest.invoices}
    manifest.save()
    assert {d.check for d in reconcile()} == {"usage_archived", "invoice_usage_rows"}


def test_a_dry_run_checks_and_writes_nothing(month, export_dir):  # noqa: F811
    [outcome] = run(dry_run=True)
    assert outcome.action == "would archive" and "5 rows" in outcome.detail
    assert exists(HERE) and UsageRecord.objects.count() == 5
    assert not UsageArchive.objects.exists()
    assert not any(export_dir.rglob("*.gz"))


def test_the_current_and_previous_months_are_never_archived(month):
    with pytest.raises(archive.ArchiveRefused, match="previous or current month"):
        archive.usage_archive(before=NEXT_MONTH, now=NEXT_MONTH)  # this month is then the previous one
    with pytest.raises(CommandError, match="previous or current month"):
        call_command("usage_archive", "--before", f"{NEXT_MONTH:%Y-%m}")
    assert exists(HERE)


def test_a_month_without_every_invoice_is_refused(snapshots, export_dir):  # noqa: F811
    invoiced, late = AccountFactory(credit=Decimal("10")), AccountFactory(credit=Decimal("10"))
    charge(invoiced, cost="0.1", at=at(1))
    charge(late, cost="0.2", at=at(2))
    invoices.invoice_build(account=invoiced, month=THIS_MONTH, now=NEXT_MONTH)
    [outcome] = run()
    assert outcome.action == "refused" and "no invoice" in outcome.detail
    assert exists(HERE) and UsageRecord.objects.count() == 2 and not UsageArchive.objects.exists()


def test_the_command_says_what_it_did(month, capsys):
    call_command("usage_archive", "--before", "2020-01", "--dry-run")
    assert "no month partition before 2020-01" in capsys.readouterr().out
    with pytest.raises(CommandError, match="not a month"):
        call_command("usage_archive", "--before", "2020-13")


def test_a_month_with_a_pending_row_or_a_charge_on_no_invoice_yet_is_refused(month):
    first, _ = month["accounts"]
    hold_id = services.hold_reserve(account_id=first.pk, request_id="req_late", amount=Decimal("0.1"))
    late = make_row(first, request_id="req_late", billing_result="pending", hold_id=hold_id, status=None, at=at(9))
    [outcome] = run()
    assert outcome.action == "refused" and "pending" in outcome.detail
    # settled after the month's invoice: its charge waits for next month's invoice
    services.hold_settle(hold_id=hold_id, cost=Decimal("0.05"))
    UsageRecord.objects.filter(pk=late.pk).update(billing_result="billed", cost_usd=Decimal("0.05"))
    [outcome] = run()
    assert outcome.action == "refused" and "on no invoice yet" in outcome.detail
    for account in month["accounts"]:
        invoices.invoice_build(account=account, month=NEXT_MONTH, now=AFTER_NEXT)
    [outcome] = run()
    assert outcome.action == "archived" and "6 rows" in outcome.detail
    assert reconcile() == []


def test_a_run_that_stopped_after_writing_is_finished_and_a_late_row_is_archived_too(month):
    partition = next(p for p in partitions.month_partitions() if p.name == HERE)
    written = archive.write(partition, storages["openbili_exports"], archive.month_totals(partition))
    assert written.status == "written" and exists(HERE)  # the process died here
    # a late write of that month lands meanwhile (a replayed outbox row)
    make_row(None, billing_result="not_billed", status=400, at=at(30))
    [outcome] = run()
    assert outcome.action == "archived" and "6 rows" in outcome.detail
    manifest = UsageArchive.objects.get()
    assert (manifest.status, manifest.rows, len(read_archive(manifest.file_name))) == ("dropped", 6, 6)
    assert not exists(HERE)
    assert reconcile() == []


def test_an_archived_months_partition_made_again_is_never_written_over(month):
    run()
    manifest = UsageArchive.objects.get()
    with connection.cursor() as cursor:  # someone made the month again by hand and wrote into it
        cursor.execute("SELECT usage_partition_ensure(%s)", [THIS_MONTH])
    make_row(None, billing_result="not_billed", status=400, at=at(30))
    [outcome] = run()
    assert outcome.action == "refused" and "exists again" in outcome.detail
    assert UsageArchive.objects.get().sha256 == manifest.sha256
