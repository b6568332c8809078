"""Reads of usage rows: the usage page, its summary and the OpenAI-Usage-API-shaped aggregates.

Every read is scoped by account (the caller's, through the API's tenancy), and every aggregate is
`date_trunc` + GROUP BY in PostgreSQL — over the hourly roll-up for the hours it covers
(usage/rollup.py) and the account's rows (the usage_account_time index) for the rest — so no
Python ever loops over usage rows, only over the groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Trunc

from billing.models import Route
from usage.models import UsageHour, UsageRecord, UsageRollup

ERROR_CLASSES: tuple[str, ...] = tuple(UsageRecord.ErrorClass.values)
TOKEN_COLUMNS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cached_input": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
BUCKETS = ("minute", "hour", "day")  # date_trunc units
# What each grouping groups by: its columns on the usage row.
GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "model": ("model_requested",),
    "api_key": ("api_key_id", "key_prefix"),  # the prefix survives a deleted key (its id is then null)
    "endpoint": ("endpoint",),
}


def reads() -> str:
    """The database the usage pages, summaries and exports read: the read replica when one is
    configured (OPENBILI_REPLICA_DATABASE_URL), else the primary. Only reads no write depends on."""
    return "replica" if settings.OPENBILI_REPLICA_READS else "default"


def usage_rows(*, account_id: int) -> QuerySet[UsageRecord]:
    """The account's usage rows with their price snapshot (one join, no query per row)."""
    return UsageRecord.objects.using(reads()).filter(account_id=account_id).select_related("price_snapshot")


def route_names(route_ids: Iterable[int | None]) -> dict[int, str]:
    """Route id → name for the routes a page of rows mentions, in one query. Names only: a route's
    base URL and secret never leave the catalog."""
    ids = {route_id for route_id in route_ids if route_id is not None}
    if not ids:
        return {}
    return dict(Route.objects.filter(pk__in=ids).values_list("pk", "name"))


def page_route_ids(rows: Iterable[UsageRecord]) -> set[int]:
    ids: set[int] = set()
    for row in rows:
        if row.route_id is not None:
            ids.add(row.route_id)
        for attempt in row.attempts if isinstance(row.attempts, list) else ():
            if isinstance(attempt, dict) and isinstance(attempt.get("route_id"), int):
                ids.add(attempt["route_id"])
    return ids


METRICS = (
    "requests",
    "errors",
    *(f"error_{name}" for name in ERROR_CLASSES),
    *(f"tokens_{kind}" for kind in TOKEN_COLUMNS),
    "image_count",
    "cost_usd",
    "uncharged_usd",
)


def _metrics() -> dict:
    metrics: dict = {
        "requests": Count("pk"),
        "errors": Count("pk", filter=~Q(error_class="")),
        **{f"error_{name}": Count("pk", filter=Q(error_class=name)) for name in ERROR_CLASSES},
        **{f"tokens_{kind}": Sum(column) for kind, column in TOKEN_COLUMNS.items()},
        "image_count": Sum("image_count"),
        "cost_usd": Sum("cost_usd"),
        "uncharged_usd": Sum("uncharged_usd"),
    }
    return metrics


def usage_aggregate(
    *,
    account_id: int,
    start: datetime,
    end: datetime,
    bucket: str,
    group_columns: Sequence[str] = (),
    models: Sequence[str] | None = None,
    api_key_ids: Sequence[int] | None = None,
) -> list[dict]:
    """Requests, errors (all and by error_class), tokens by kind, images and cost of the account's
    rows started in [start, end), per `bucket` (a date_trunc unit, in UTC) and per `group_columns`,
    ordered by bucket then group; buckets without rows are absent.

    Whole hours the roll-up has reached (usage/rollup.py) are summed from UsageHour, the rest —
    the partial hour at the start, the hours since the watermark — from the rows: two queries
    whose groups are added up here. Minute buckets always come from the rows."""
    if bucket not in BUCKETS:
        raise ValueError(bucket)
    keys = ("bucket", *group_columns)
    parts: list[Iterable[dict]] = []
    raw = Q(started_at__gte=start, started_at__lt=end)
    through = rollup_watermark() if bucket != "minute" else None
    if through is not None:
        first = start if start == floor_hour(start) else floor_hour(start) + timedelta(hours=1)
        last = min(floor_hour(end), through)
        if first < last:
            hours = UsageHour.objects.using(reads()).filter(account_id=account_id, hour__gte=first, hour__lt=last)
            if models is not None:
                hours = hours.filter(model_requested__in=models)
            if api_key_ids is not None:
                hours = hours.filter(api_key_id__in=api_key_ids)
            summed = {name: Sum(name) for name in METRICS}
            parts.append(hours.annotate(bucket=Trunc("hour", bucket, tzinfo=UTC)).values(*keys).annotate(**summed))
            raw = Q(started_at__gte=start, started_at__lt=first) | Q(started_at__gte=last, started_at__lt=end)
    rows = UsageRecord.objects.using(reads()).filter(raw, account_id=account_id)
    if models is not None:
        rows = rows.filter(model_requested__in=models)
    if api_key_ids is not None:
        rows = rows.filter(api_key_id__in=api_key_ids)
    grouped = rows.annotate(bucket=Trunc("started_at", bucket, tzinfo=UTC)).values(*keys)
    parts.append(grouped.annotate(**_metrics()))
    merged: dict[tuple, dict] = {}
    for part in parts:
        for group in part:
            key = tuple(group[k] for k in keys)
            if key in merged:
                for name in METRICS:
                    merged[key][name] = (merged[key][name] or 0) + (group[name] or 0)
            else:
                merged[key] = dict(group)
    return [merged[key] for key in sorted(merged, key=_sort_key)]


def _sort_key(key: tuple) -> tuple:
    # Sorted here, not by ORDER BY, so that the order never depends on the database's collation
    # or on which part a group came from; None (a deleted key's id) last, as in PostgreSQL.
    return tuple((value is None, value) for value in key)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_watermark() -> datetime | None:
    """Hours before this are in UsageHour (usage/rollup.py); None: nothing is rolled up yet."""
    return UsageRollup.objects.using(reads()).filter(pk=1).values_list("through", flat=True).first()


def totals_of(groups: Iterable[dict]) -> dict:
    """The sum of aggregated groups (as usage_aggregate returns them): the totals of their range."""
    names = ("requests", "errors", *(f"error_{c}" for c in ERROR_CLASSES), *(f"tokens_{k}" for k in TOKEN_COLUMNS))
    total: dict = dict.fromkeys((*names, "image_count"), 0) | {"cost_usd": Decimal(0), "uncharged_usd": Decimal(0)}
    for group in groups:
        for name in total:
            total[name] += group[name] or 0
    return total
