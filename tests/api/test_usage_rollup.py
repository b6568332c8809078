"""The hourly roll-up behind the summaries (usage/rollup.py): whatever part of a range it covers,
every aggregate is exactly what the rows alone give; the watermark stops at open holds and the
margin; an hour marked dirty is recomputed; runs are idempotent."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import connection

from billing import services
from billing.models import Hold
from tests.api.test_usage import make_row
from usage import rollup, selectors
from usage.gateway import outbox, sql
from usage.gateway.state import conninfo
from usage.models import UsageHour, UsageHourDirty, UsageRecord, UsageRollup

H = timedelta(hours=1)
NOW = datetime(2026, 11, 20, 10, 17, 30, tzinfo=UTC)


@pytest.fixture
def rows(alice, bob):
    """Rows of two accounts over three days: models, keys (one deleted), endpoints, errors, costs
    with all twelve decimals, images, the edges of hours (xx:00:00 and xx:59:59.999999)."""
    account = alice.account
    key_a, _ = services.key_create(account=account, name="a")
    key_b, _ = services.key_create(account=account, name="b")
    other_key, _ = services.key_create(account=bob.account, name="other")
    start = NOW - timedelta(days=3)
    made = []
    shapes = itertools.cycle(
        [
            {"model_requested": "gpt-5", "input_tokens": 120, "output_tokens": 30,
             "cost_usd": Decimal("0.000123456789")},
            {"model_requested": "claude-sonnet-4-6", "endpoint": "/v1/messages", "cached_input_tokens": 64,
             "cache_write_tokens": 9, "cost_usd": Decimal("0.5")},
            {"model_requested": "gpt-5", "status": 429, "error_class": "quota_or_rate_limit",
             "billing_result": "not_billed"},
            {"model_requested": "gpt-image-2", "endpoint": "/v1/images/generations", "image_count": 2,
             "cost_usd": Decimal("0.08"), "uncharged_usd": Decimal("0.000000000001")},
            {"model_requested": "gpt-5", "status": 200, "error_class": "stream_interrupted", "stream": True,
             "billing_result": "failed_but_billable", "output_tokens": 7, "reasoning_tokens": 5,
             "cost_usd": Decimal("0.000000000007")},
        ]
    )  # fmt: skip
    for n in range(150):
        moment = start + n * timedelta(minutes=29, seconds=7)
        if n % 17 == 0:
            moment = moment.replace(minute=0, second=0, microsecond=0)
        if n % 19 == 0:
            moment = moment.replace(minute=59, second=59, microsecond=999999)
        key = (key_a, key_b)[n % 2]
        made.append(make_row(account, key=key, at=moment, **next(shapes)))
    for n in range(20):
        made.append(make_row(bob.account, key=other_key, at=start + n * 3 * H, cost_usd=Decimal("9")))
    services.key_delete(key=key_b, actor=alice.user)
    UsageRecord.objects.filter(api_key=key_b).update(api_key=None)  # as if the key row were gone
    return {"account": account, "keys": (key_a, key_b), "start": start}


def raw_aggregate(**query) -> list[dict]:
    """usage_aggregate with the roll-up out of the way: the rows alone."""
    saved = list(UsageRollup.objects.values_list("pk", "through"))
    UsageRollup.objects.all().delete()
    try:
        return selectors.usage_aggregate(**query)
    finally:
        UsageRollup.objects.bulk_create([UsageRollup(pk=pk, through=through) for pk, through in saved])


def queries(account, start):
    ranges = [
        (start - H, NOW + H),  # all of it, past the watermark
        (start + timedelta(minutes=13), NOW - 5 * H + timedelta(minutes=1)),  # partial hours at both ends
        (start + 24 * H, start + 48 * H),  # whole hours only
        (start + 30 * H + timedelta(minutes=10), start + 30 * H + timedelta(minutes=50)),  # inside one hour
    ]
    for (begin, end), bucket, group in itertools.product(
        ranges, ("hour", "day"), (None, "model", "api_key", "endpoint")
    ):
        yield {
            "account_id": account.pk,
            "start": begin,
            "end": end,
            "bucket": bucket,
            "group_columns": selectors.GROUP_COLUMNS[group] if group else (),
        }


def test_every_aggregate_is_what_the_rows_give(rows):
    account, start = rows["account"], rows["start"]
    assert rollup.usage_rollup(now=NOW) > 70  # three days of hours, up to the margin
    through = rollup.watermark()
    assert through == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert UsageHour.objects.filter(account=account).exists()
    checked = 0
    for query in queries(account, start):
        served = selectors.usage_aggregate(**query)
        assert served == raw_aggregate(**query), query
        checked += bool(served)
    assert checked > 20
    key_a = rows["keys"][0]
    filtered = {"models": ["gpt-5"], "api_key_ids": [key_a.pk]}
    query = next(queries(account, start)) | filtered | {"group_columns": ("model_requested",)}
    assert selectors.usage_aggregate(**query) == raw_aggregate(**query)
    totals = selectors.totals_of(selectors.usage_aggregate(**next(queries(account, start))))
    mine = UsageRecord.objects.filter(account=account)
    assert totals["requests"] == mine.count() == 150
    assert totals["cost_usd"] == sum(row.cost_usd for row in mine)
    assert totals["image_count"] == sum(row.image_count for row in mine)


def test_the_summary_api_reads_the_rollup_unchanged(rows, alice):
    def summary():
        reply = alice.client.get(
            alice.url("/usage/summary"),
            {"start": rows["start"].isoformat(), "end": (NOW + H).isoformat(), "bucket": "hour", "group_by": "model"},
        )
        assert reply.status_code == 200, reply.content
        return reply.json()

    before = summary()
    rollup.usage_rollup(now=NOW)
    assert rollup.watermark() is not None
    assert summary() == before
    assert before["totals"]["requests"] == 150


def test_the_watermark_stops_before_an_open_hold_and_the_margin(rows, settings):
    account = rows["account"]
    settings.OPENBILI_USAGE_ROLLUP_MARGIN_SECONDS = 600
    rollup.usage_rollup(now=datetime(2026, 11, 20, 10, 5, tzinfo=UTC))
    assert rollup.watermark() == datetime(2026, 11, 20, 9, tzinfo=UTC)  # 09:55 is not a whole hour yet
    hold = Hold.objects.create(
        account=account, request_id="req_open", amount=Decimal("1"), expires_at=NOW + H
    )  # a request in flight since 09:40 (created_at is set on insert)
    Hold.objects.filter(pk=hold.pk).update(created_at=datetime(2026, 11, 20, 9, 40, tzinfo=UTC))
    assert rollup.usage_rollup(now=NOW + 5 * H) == 0
    assert rollup.watermark() == datetime(2026, 11, 20, 9, tzinfo=UTC)
    Hold.objects.filter(pk=hold.pk).update(resolved_at=NOW, state="released")
    assert rollup.usage_rollup(now=NOW + 5 * H) == 6  # 09:00 to 15:00 (15:07 is not a whole hour)
    assert rollup.watermark() == datetime(2026, 11, 20, 15, tzinfo=UTC)


def test_a_late_write_marked_dirty_is_recomputed_and_runs_are_idempotent(rows, alice):
    account, start = rows["account"], rows["start"]
    rollup.usage_rollup(now=NOW)
    query = {"account_id": account.pk, "start": start - H, "end": NOW + H, "bucket": "day"}
    first = selectors.usage_aggregate(**query)
    assert rollup.usage_rollup(now=NOW) == 0
    assert selectors.usage_aggregate(**query) == first
    late = make_row(account, at=start + 2 * H + timedelta(minutes=3), cost_usd=Decimal("1.000000000001"))
    assert selectors.usage_aggregate(**query) != raw_aggregate(**query)  # the roll-up does not know it yet
    with connection.cursor() as cursor:  # the mark of a write that landed late
        cursor.execute(outbox.MARK_DIRTY, {"request_id": late.request_id, "started_at": late.started_at})
    assert list(UsageHourDirty.objects.values_list("hour", flat=True)) == [
        (start + 2 * H).replace(minute=0, second=0, microsecond=0)
    ]
    assert rollup.usage_rollup(now=NOW) == 1
    assert not UsageHourDirty.objects.exists()
    assert selectors.usage_aggregate(**query) == raw_aggregate(**query)
    totals = selectors.totals_of(selectors.usage_aggregate(**query))
    assert totals["cost_usd"] == selectors.totals_of(first)["cost_usd"] + Decimal("1.000000000001")
    recent = make_row(account, at=NOW - timedelta(minutes=1))
    with connection.cursor() as cursor:  # past the watermark: a needless mark, harmless
        cursor.execute(outbox.MARK_DIRTY, {"request_id": recent.request_id, "started_at": recent.started_at})
    assert rollup.usage_rollup(now=NOW) == 1
    assert selectors.usage_aggregate(**query) == raw_aggregate(**query)


@pytest.mark.django_db(transaction=True)
def test_a_row_landing_from_the_outbox_after_its_hour_was_rolled_up_is_counted(alice):
    """The sweeper's drain (its own connection, as in production) lands a deferred row whose hour
    the roll-up has passed, and marks the hour: the next run makes the summary exact again."""
    account = alice.account
    at = NOW - 5 * H + timedelta(minutes=7)
    make_row(account, at=at - H)
    late = make_row(account, at=at, cost_usd=Decimal("0.000000000007"), input_tokens=11)
    params = {column: getattr(late, column) for column in sql.COLUMNS}  # an outbox item's row
    late.delete()  # the row's write failed: it waits in the outbox
    rollup.usage_rollup(now=NOW)
    assert rollup.watermark() > at
    query = {"account_id": account.pk, "start": at - 2 * H, "end": NOW, "bucket": "hour"}
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(outbox.KEY)
    client.rpush(outbox.KEY, outbox.document("row", params))
    try:
        assert outbox.drain_sync(settings.REDIS_URL, conninfo()) == 1
    finally:
        client.delete(outbox.KEY)
        client.close()
    assert UsageRecord.objects.filter(request_id=late.request_id).exists()
    assert list(UsageHourDirty.objects.values_list("hour", flat=True)) == [selectors.floor_hour(at)]
    assert rollup.usage_rollup(now=NOW) == 1
    summed = selectors.usage_aggregate(**query)
    assert summed == raw_aggregate(**query)
    assert selectors.totals_of(summed)["tokens_input"] == 11


def test_minute_buckets_and_an_empty_table(db):
    assert rollup.usage_rollup(now=NOW) == 0
    assert rollup.watermark() is None
    assert selectors.usage_aggregate(account_id=1, start=NOW - H, end=NOW, bucket="minute") == []
