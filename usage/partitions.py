"""The usage table's monthly partitions (migration 0010): made ahead, listed, checked.

One partition per calendar month (UTC) of started_at, `usage_usagerecord_pYYYY_MM`, and a
DEFAULT partition that takes a row no month partition would (a gateway whose clock is far off, or
months nobody made): such a row is never lost, and `partitions_ensure` makes its month and moves
it there — unless the month was archived (usage/archive.py), which an operator then decides
about (the log says so). Making a partition locks the parent table briefly; each is made in its
own transaction with a lock timeout, so a long read holding the table cannot queue the gateway's
writes behind it: the partition is then made by the next run (the daily task makes them months
before they are needed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone

from billing.invoices import month_start, next_month

log = logging.getLogger("openbili.usage")

PARENT = "usage_usagerecord"
DEFAULT = "usage_usagerecord_default"
NAME = re.compile(r"usage_usagerecord_p(\d{4})_(\d{2})")
AHEAD = 3  # months made after the current one
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start: datetime  # the month's first instant, UTC
    end: datetime  # the next month's

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"


def partition_name(month: datetime) -> str:
    return f"usage_usagerecord_p{month:%Y_%m}"


def month_partitions() -> list[Partition]:
    """The month partitions that exist, oldest first (DEFAULT not included)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        names = [name for (name,) in cursor.fetchall()]
    found = []
    for name in names:
        if match := NAME.fullmatch(name):
            start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
            found.append(Partition(name, start, next_month(start)))
    return sorted(found, key=lambda partition: partition.start)


def default_months() -> list[datetime]:
    """The months of the rows in the DEFAULT partition (none in normal operation)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT date_trunc('month', started_at, 'UTC') FROM {DEFAULT} ORDER BY 1")  # noqa: S608
        return [month for (month,) in cursor.fetchall()]


def partition_ensure(month: datetime) -> bool:
    """Make the partition of `month` (any instant in it) if it is missing, moving its rows out of
    DEFAULT; True if it was made. Raises OperationalError (lock timeout) if the table stays busy."""
    name = partition_name(month_start(month))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])
        cursor.execute("SELECT to_regclass(%s) IS NULL", [name])
        (missing,) = cursor.fetchone()
        if missing:
            cursor.execute("SELECT usage_partition_ensure(%s)", [month_start(month)])
    if missing:
        log.info("usage partition %s made", name)
    return missing


def partitions_ensure(*, now: datetime | None = None, ahead: int = AHEAD) -> list[str]:
    """This month's partition and the next `ahead` months', and those of any month with rows in
    DEFAULT (never an archived month's); returns the names of those made. Idempotent."""
    from usage.models import UsageArchive

    month = month_start(now or timezone.now())
    months = [month]
    for _ in range(ahead):
        months.append(next_month(months[-1]))
    archived = set(UsageArchive.objects.values_list("month", flat=True))
    for stray in default_months():
        if stray in archived:
            log.error(
                "usage: rows of %s, an archived month, are in the DEFAULT partition (%s): not moved; "
                "an operator decides (docs/operations.md)",
                f"{stray:%Y-%m}",
                DEFAULT,
            )
        else:
            log.error("usage: rows of %s landed in the DEFAULT partition; making its partition", f"{stray:%Y-%m}")
            months.append(stray)
    return [partition_name(m) for m in sorted(set(months)) if partition_ensure(m)]
