"""Old months of usage rows leave the database (issue 15): `manage.py usage_archive --before YYYY-MM`.

A month's partition (usage/partitions.py) is archived only when nothing can still change or need
its rows in the database:
- it ended before the previous month began (the current and previous months never are);
- no row of it is pending, and no row of that month waits in the DEFAULT partition;
- every account with rows or ledger entries in the month has that month's invoice, and every
  ledger charge of its rows is covered by an invoice (a request that started on the 31st and
  settled on the 1st is on the next month's invoice, which must exist too);
- its rows and the ledger agree (each charged row has its charge, of its cost, on its account).

Then, each step safe to repeat after a crash at any point (the manifest, usage.UsageArchive,
says how far it got):
1. COPY the partition TO STDOUT as CSV (a header, then every column, by id), gzipped into
   `usage-archive/YYYY-MM.csv.gz` in the `openbili_exports` storage (private, as the exports),
   replacing what a dead run left; the manifest records rows, size, SHA-256 and what the rows add
   up to per account and per invoice (status `written`);
2. read the file back from storage: its SHA-256, its rows and their cost per account must be the
   manifest's (status `verified`);
3. in one transaction: lock the partition, check it still has the manifest's rows and cost (a
   late write would have changed them: back to step 1), DETACH it, DROP it, status `dropped`.

Reconciliation then balances the ledger's charges of archived rows against the manifests
(billing/reconcile.py). Restoring a month: docs/operations.md.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.core.files import File
from django.core.files.storage import Storage
from django.db import connection, transaction
from django.utils import timezone

from billing import money
from billing.invoices import month_start, previous_month
from usage.exports import export_storage
from usage.models import UsageArchive
from usage.partitions import DEFAULT, Partition, month_partitions

log = logging.getLogger("openbili.usage")

LOCK_TIMEOUT = "10s"  # DETACH and DROP lock the parent table: never queue the gateway behind a long read
RUN_LOCK = 0x05A6_E0A7  # pg_try_advisory_lock: one archiving run at a time
NO_ACCOUNT = ""  # the manifest's key for rows of no account


class ArchiveRefused(Exception):
    """The month cannot be archived yet; the message says why."""


@dataclass(frozen=True, slots=True)
class Outcome:
    month: str
    action: str  # archived, already archived, would archive, refused
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.month}: {self.action}" + (f" — {self.detail}" if self.detail else "")


def archive_name(partition: Partition) -> str:
    return f"usage-archive/{partition.label}.csv.gz"


def latest_archivable(now: datetime) -> datetime:
    """The first month that may not be archived: the previous one (its invoices are days old)."""
    return previous_month(month_start(now))


def usage_archive(
    *, before: datetime, dry_run: bool = False, now: datetime | None = None, say: Callable[[str], None] = log.info
) -> list[Outcome]:
    """Archive every month partition that ends by `before` (a month's first instant) and may be
    archived; `dry_run` checks and reports, and writes nothing. Months are done oldest first and
    the first refusal stops the run (a later month is not archived before an earlier one)."""
    limit = latest_archivable(now or timezone.now())
    if before > limit:
        raise ArchiveRefused(
            f"--before {before:%Y-%m} would include the previous or current month: at most {limit:%Y-%m}"
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RUN_LOCK])
        if not cursor.fetchone()[0]:
            raise ArchiveRefused("another usage_archive run is going on")
        try:
            return _archive_months(before, dry_run, say)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RUN_LOCK])


def _archive_months(before: datetime, dry_run: bool, say: Callable[[str], None]) -> list[Outcome]:
    outcomes = []
    archived = {a.month: a for a in UsageArchive.objects.filter(status=UsageArchive.Status.DROPPED)}
    partitions = {p.start: p for p in month_partitions() if p.end <= before}
    for month in sorted(archived.keys() - partitions.keys()):
        if month < before:
            outcomes.append(Outcome(f"{month:%Y-%m}", "already archived", archived[month].file_name))
    for partition in partitions.values():
        try:
            outcome = archive_month(partition, dry_run=dry_run, say=say)
        except ArchiveRefused as exc:
            outcomes.append(Outcome(partition.label, "refused", str(exc)))
            break
        outcomes.append(outcome)
    outcomes.sort(key=lambda outcome: outcome.month)
    return outcomes


def archive_month(partition: Partition, *, dry_run: bool = False, say: Callable[[str], None] = log.info) -> Outcome:
    check_archivable(partition)
    totals = month_totals(partition)
    rows = sum(account["rows"] for account in totals["accounts"].values())
    if dry_run:
        return Outcome(partition.label, "would archive", f"{rows} rows, {totals['cost_usd']} USD")
    archive = UsageArchive.objects.filter(month=partition.start).first()
    if archive is not None and archive.status == UsageArchive.Status.DROPPED:
        # Never written over: the file holds the month as it was archived.
        raise ArchiveRefused(
            f"archived and dropped on {archive.dropped_at:%Y-%m-%d}, but {partition.name} exists again "
            f"({rows} rows): an operator decides (docs/operations.md)"
        )
    storage = export_storage()
    if archive is None or archive.status == UsageArchive.Status.WRITTEN or not same_totals(archive, totals):
        say(f"{partition.label}: copying {rows} rows to {archive_name(partition)}")
        archive = write(partition, storage, totals)
    if archive.status == UsageArchive.Status.WRITTEN:
        say(f"{partition.label}: reading {archive.file_name} back")
        verify(archive, storage)
    say(f"{partition.label}: dropping {partition.name}")
    drop(partition, archive)
    return Outcome(partition.label, "archived", f"{archive.rows} rows, {archive.size_bytes} bytes, {archive.file_name}")


# --- the rules -------------------------------------------------------------------------------------


def _one(sql: str, params: dict | None = None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params or {})
        return cursor.fetchone()[0]


def check_archivable(partition: Partition) -> None:
    """Raises ArchiveRefused naming the first rule the month breaks."""
    p = connection.ops.quote_name(partition.name)
    span = {"start": partition.start, "end": partition.end}
    pending = _one(f"SELECT count(*) FROM {p} WHERE billing_result = 'pending'")  # noqa: S608
    if pending:
        raise ArchiveRefused(f"{pending} row(s) still pending")
    stray = _one(f"SELECT count(*) FROM {DEFAULT} WHERE started_at >= %(start)s AND started_at < %(end)s", span)  # noqa: S608
    if stray:
        raise ArchiveRefused(f"{stray} row(s) of this month are in {DEFAULT}: run `manage.py usage_partitions` first")
    uninvoiced = _one(
        f"""SELECT count(*) FROM (SELECT account_id FROM {p} WHERE account_id IS NOT NULL
                                   UNION SELECT account_id FROM billing_ledgerentry
                                          WHERE created_at >= %(start)s AND created_at < %(end)s) a
             WHERE NOT EXISTS (SELECT 1 FROM billing_invoice i
                                WHERE i.account_id = a.account_id AND i.period_start = %(start)s)""",  # noqa: S608
        span,
    )
    if uninvoiced:
        raise ArchiveRefused(f"{uninvoiced} account(s) with usage or ledger entries this month have no invoice for it")
    uncovered = _one(
        f"""SELECT count(*) FROM {p} u JOIN billing_ledgerentry e ON e.request_id = u.request_id AND e.kind = 'usage'
             WHERE NOT EXISTS (SELECT 1 FROM billing_invoiceentry c WHERE c.entry_id = e.id)"""  # noqa: S608
    )
    if uncovered:
        raise ArchiveRefused(f"{uncovered} charge(s) of this month's rows are on no invoice yet (next month's?)")
    differ = _one(
        f"""SELECT count(*) FROM {p} u
              LEFT JOIN billing_ledgerentry e ON e.request_id = u.request_id AND e.kind = 'usage'
             WHERE (e.id IS NOT NULL AND (-e.amount <> u.cost_usd OR e.account_id IS DISTINCT FROM u.account_id))
                OR (e.id IS NULL AND u.cost_usd > 0 AND u.billing_result IN ('billed', 'failed_but_billable'))"""  # noqa: S608
    )
    if differ:
        raise ArchiveRefused(f"{differ} row(s) disagree with the ledger (manage.py reconcile lists them)")


def month_totals(partition: Partition) -> dict:
    """What the month's rows add up to: per account, per invoice, in all (the manifest's)."""
    p = connection.ops.quote_name(partition.name)
    accounts: dict[str, dict] = {}
    invoices: dict[str, str] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT u.account_id, count(*), coalesce(sum(u.cost_usd), 0), count(e.id), coalesce(-sum(e.amount), 0)
                  FROM {p} u LEFT JOIN billing_ledgerentry e ON e.request_id = u.request_id AND e.kind = 'usage'
                 GROUP BY 1"""  # noqa: S608
        )
        for account_id, rows, cost, charged_rows, charged in cursor.fetchall():
            accounts[NO_ACCOUNT if account_id is None else str(account_id)] = {
                "rows": rows, "cost_usd": str(cost), "charged_rows": charged_rows, "charged_usd": str(charged),
            }  # fmt: skip
        cursor.execute(
            f"""SELECT c.invoice_id, sum(u.cost_usd)
                  FROM {p} u JOIN billing_ledgerentry e ON e.request_id = u.request_id AND e.kind = 'usage'
                  JOIN billing_invoiceentry c ON c.entry_id = e.id
                 GROUP BY 1 ORDER BY 1"""  # noqa: S608
        )
        invoices = {str(invoice_id): str(cost) for invoice_id, cost in cursor.fetchall()}
    cost = sum((Decimal(a["cost_usd"]) for a in accounts.values()), money.ZERO)
    return {"accounts": accounts, "invoices": invoices, "cost_usd": cost}


def same_totals(archive: UsageArchive, totals: dict) -> bool:
    return archive.accounts == totals["accounts"] and archive.invoices == totals["invoices"]


# --- the steps -------------------------------------------------------------------------------------


def write(partition: Partition, storage: Storage, totals: dict) -> UsageArchive:
    """Step 1: the partition to a gzipped CSV in storage, and the manifest (status written)."""
    name = archive_name(partition)
    p = connection.ops.quote_name(partition.name)
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as spool:
        with gzip.GzipFile(fileobj=spool, mode="wb", mtime=0) as out, connection.cursor() as cursor:
            raw = cursor.cursor  # psycopg's: COPY streams without holding the month in memory
            with raw.copy(f"COPY (SELECT * FROM {p} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:  # noqa: S608
                for chunk in copy:
                    out.write(chunk)
            copied = raw.rowcount
        size = spool.tell()
        spool.seek(0)
        for block in iter(lambda: spool.read(1 << 20), b""):
            digest.update(block)
        spool.seek(0)
        if storage.exists(name):  # a dead run's file: replaced, never kept beside a second one
            storage.delete(name)
        saved = storage.save(name, File(spool, name=os.path.basename(name)))
    if saved != name:
        storage.delete(saved)
        raise ArchiveRefused(f"storage saved the file as {saved!r}, not {name!r}: another run at once?")
    rows = sum(account["rows"] for account in totals["accounts"].values())
    if copied != rows:
        raise ArchiveRefused(f"COPY wrote {copied} rows, the partition had {rows}: rows changed meanwhile; rerun")
    archive, _ = UsageArchive.objects.update_or_create(
        month=partition.start,
        defaults={
            "partition": partition.name, "status": UsageArchive.Status.WRITTEN, "rows": rows, "file_name": name,
            "size_bytes": size, "sha256": digest.hexdigest(), "cost_usd": totals["cost_usd"],
            "accounts": totals["accounts"], "invoices": totals["invoices"], "created_at": timezone.now(),
            "verified_at": None,
        },
    )  # fmt: skip
    return archive


def read_back(archive: UsageArchive, storage: Storage) -> tuple[str, int, dict[str, tuple[int, Decimal]]]:
    """The stored file's SHA-256, its rows and (rows, cost) per account, from the file itself."""
    digest = hashlib.sha256()
    per_account: dict[str, list] = defaultdict(lambda: [0, money.ZERO])
    rows = 0
    with storage.open(archive.file_name, "rb") as stored, tempfile.TemporaryFile() as spool:
        for block in iter(lambda: stored.read(1 << 20), b""):
            digest.update(block)
            spool.write(block)
        spool.seek(0)
        with gzip.GzipFile(fileobj=spool, mode="rb") as unzipped:
            reader = csv.DictReader(io.TextIOWrapper(unzipped, encoding="utf-8", newline=""))
            for row in reader:
                totals = per_account[row["account_id"]]
                totals[0] += 1
                totals[1] += Decimal(row["cost_usd"])
                rows += 1
    return digest.hexdigest(), rows, {account: (n, cost) for account, (n, cost) in per_account.items()}


def verify(archive: UsageArchive, storage: Storage) -> None:
    """Step 2: the stored file is what the manifest says (status verified)."""
    sha256, rows, per_account = read_back(archive, storage)
    expected = {account: (t["rows"], Decimal(t["cost_usd"])) for account, t in archive.accounts.items()}
    if sha256 != archive.sha256 or rows != archive.rows or per_account != expected:
        raise ArchiveRefused(
            f"{archive.file_name} read back does not match its manifest (sha256 {sha256}, {rows} rows): "
            "rerun to write it again"
        )
    UsageArchive.objects.filter(pk=archive.pk).update(status=UsageArchive.Status.VERIFIED, verified_at=timezone.now())
    archive.status = UsageArchive.Status.VERIFIED


def drop(partition: Partition, archive: UsageArchive) -> None:
    """Step 3: detach and drop the partition, if it still holds exactly the archived rows."""
    p = connection.ops.quote_name(partition.name)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])
        cursor.execute(f"LOCK TABLE {p} IN SHARE MODE")  # no write lands between the count and the drop
        # DROP refuses a table with foreign-key checks still deferred (rows written earlier in this
        # transaction: only ever a test's); run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"SELECT count(*), coalesce(sum(cost_usd), 0) FROM {p}")  # noqa: S608
        rows, cost = cursor.fetchone()
        if rows != archive.rows or cost != archive.cost_usd:  # the rerun's totals differ: written anew
            raise ArchiveRefused(
                f"{partition.name} has {rows} rows ({cost} USD) since it was archived with {archive.rows} "
                f"({archive.cost_usd} USD): a late write; rerun to archive it again"
            )
        cursor.execute(f"ALTER TABLE usage_usagerecord DETACH PARTITION {p}")
        cursor.execute(f"DROP TABLE {p}")
        UsageArchive.objects.filter(pk=archive.pk).update(status=UsageArchive.Status.DROPPED, dropped_at=timezone.now())
