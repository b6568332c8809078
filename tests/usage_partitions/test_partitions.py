"""The usage table partitioned by month (issue 15; migration 0010): a row lands in its month's
partition (or DEFAULT, never lost, moved out when its month is made); request_id stays unique
across months, also when the gateway's writes are replayed; the gateway's settle reads one
partition and stays a HOT update; partitions are made ahead, idempotently."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from billing import invoices, services
from tests.api.test_usage import make_row
from tests.factories import AccountFactory
from usage import partitions
from usage.gateway import ids, outbox, sql
from usage.models import UsageArchive, UsageRecord

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC)
THIS_MONTH = invoices.month_start(NOW)
NEXT_MONTH = invoices.next_month(THIS_MONTH)
LONG_AGO = datetime(2020, 1, 15, 12, 0, tzinfo=UTC)  # no partition: the test database's start after it


def partition_of(row: UsageRecord) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM usage_usagerecord WHERE id = %s AND started_at = %s",
            [row.pk, row.started_at],
        )
        return cursor.fetchone()[0]


def gateway_row(account, started_at: datetime, request_id: str | None = None) -> dict:
    """A finished usage row as the gateway writes it (sql.INSERT_USAGE's parameters)."""
    row = dict.fromkeys(sql.COLUMNS, None) | {
        "request_id": request_id or ids.request_id(started_at), "trace_id": "trace_x", "account_id": account.pk,
        "key_prefix": "", "endpoint": "/v1/chat/completions", "model_requested": "gpt-5", "provider": "",
        "upstream_model": "", "stream": False, "status": 400, "error_class": "invalid_request",
        "error_code": "bad", "error_message": "", "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "image_count": 0, "tokens_estimated": False,
        "cost_usd": 0, "uncharged_usd": 0, "billing_result": "not_billed", "output_reached_client": False,
        "started_at": started_at, "attempts": "[]", "user_agent": "test", "response_id": "",
    }  # fmt: skip
    return row


def test_a_row_lands_in_its_months_partition():
    account = AccountFactory()
    this = make_row(account, at=THIS_MONTH + timedelta(minutes=1))
    nxt = make_row(account, at=NEXT_MONTH + timedelta(days=3))
    last_instant = make_row(account, at=NEXT_MONTH - timedelta(microseconds=1))
    assert partition_of(this) == partitions.partition_name(THIS_MONTH)
    assert partition_of(nxt) == partitions.partition_name(NEXT_MONTH)
    assert partition_of(last_instant) == partitions.partition_name(THIS_MONTH)


def test_a_row_of_a_month_without_partition_waits_in_default_and_moves_when_its_month_is_made(caplog):
    account = AccountFactory()
    stray = make_row(account, at=LONG_AGO)
    assert partition_of(stray) == partitions.DEFAULT
    assert partitions.default_months() == [datetime(2020, 1, 1, tzinfo=UTC)]
    with caplog.at_level(logging.ERROR, logger="openbili.usage"):
        made = partitions.partitions_ensure()
    assert "usage_usagerecord_p2020_01" in made
    assert "rows of 2020-01 landed in the DEFAULT partition" in caplog.text
    assert partition_of(stray) == "usage_usagerecord_p2020_01"
    assert partitions.default_months() == []
    moved = UsageRecord.objects.get(pk=stray.pk)  # the same row, every column
    assert (moved.request_id, moved.started_at, moved.cost_usd) == (stray.request_id, stray.started_at, stray.cost_usd)


def test_partitions_are_made_months_ahead_once():
    later = NOW + timedelta(days=200)
    made = partitions.partitions_ensure(now=later)
    expected = [later]
    for _ in range(partitions.AHEAD):
        expected.append(invoices.next_month(invoices.month_start(expected[-1])))
    names = {partitions.partition_name(invoices.month_start(m)) for m in expected}
    assert names <= {p.name for p in partitions.month_partitions()}
    assert set(made) <= names
    assert partitions.partitions_ensure(now=later) == []  # idempotent
    assert partitions.partitions_ensure() == []  # this month and the next three: made by the migration


def test_an_archived_months_stray_row_is_left_in_default_for_an_operator(caplog):
    UsageArchive.objects.create(
        month=datetime(2020, 1, 1, tzinfo=UTC), partition="usage_usagerecord_p2020_01", status="dropped",
        rows=0, file_name="usage-archive/2020-01.csv.gz", size_bytes=0, sha256="0" * 64, cost_usd=0,
    )  # fmt: skip
    stray = make_row(AccountFactory(), at=LONG_AGO)
    with caplog.at_level(logging.ERROR, logger="openbili.usage"):
        made = partitions.partitions_ensure()
    assert "usage_usagerecord_p2020_01" not in made
    assert "an archived month" in caplog.text
    assert partition_of(stray) == partitions.DEFAULT


# --- request_id is unique across months ---------------------------------------------------------


def test_the_same_request_id_twice_is_refused_in_one_month_and_across_months():
    account = AccountFactory()
    started = THIS_MONTH + timedelta(minutes=5, microseconds=123)
    request_id = ids.request_id(started)
    make_row(account, request_id=request_id, at=started)
    with pytest.raises(IntegrityError, match="request_id, started_at"), transaction.atomic():
        make_row(account, request_id=request_id, at=started)
    # the same id with any other start, in this month or another, breaks the id's own CHECK
    for other in (started + timedelta(microseconds=1), NEXT_MONTH + timedelta(days=1), LONG_AGO):
        with pytest.raises(IntegrityError, match="usage_request_id_time"), transaction.atomic():
            make_row(account, request_id=request_id, at=other)
    assert UsageRecord.objects.filter(request_id=request_id).count() == 1


def test_ids_made_before_the_table_was_partitioned_are_still_accepted():
    legacy = "req_" + "0123456789ab4def8123456789abcdef"  # uuid4's shape: version nibble 4
    assert ids.started_at(legacy) is None
    row = make_row(AccountFactory(), request_id=legacy, at=THIS_MONTH + timedelta(minutes=1))
    assert UsageRecord.objects.get(request_id=legacy).pk == row.pk


def test_a_time_carrying_id_says_its_start_to_the_microsecond_in_python_and_sql():
    for moment in (
        NOW,
        THIS_MONTH,
        NEXT_MONTH - timedelta(microseconds=1),
        datetime(2099, 12, 31, 23, 59, 59, 999999, UTC),
    ):
        request_id = ids.request_id(moment)
        assert len(request_id) == 36 and ids.SHAPE.fullmatch(request_id)
        assert ids.started_at(request_id) == moment
        with connection.cursor() as cursor:
            cursor.execute("SELECT usage_request_started(%s)", [request_id])
            assert cursor.fetchone()[0] == moment
    assert ids.request_id(NOW) != ids.request_id(NOW)  # 62 random bits beside the time


def test_a_replayed_gateway_row_is_written_once_and_a_forged_start_is_refused():
    account = AccountFactory()
    row = gateway_row(account, THIS_MONTH + timedelta(hours=1))
    item = json.loads(outbox.document("row", row))  # as it waits in Redis: started_at an ISO string
    with connection.cursor() as cursor:
        raw = cursor.cursor
        outbox.apply_sync(raw, item)
        outbox.apply_sync(raw, item)  # the outbox's replay
        raw.execute(sql.INSERT_USAGE, row)  # and the gateway's own statement, again
        assert raw.rowcount == 0
        moved = row | {"started_at": NEXT_MONTH + timedelta(hours=1)}
        with pytest.raises(Exception, match="usage_request_id_time"), transaction.atomic():
            connection.cursor().cursor.execute(sql.INSERT_USAGE, moved)
    assert UsageRecord.objects.filter(request_id=row["request_id"]).count() == 1


# --- the gateway's settle reads one partition ------------------------------------------------------


def reserve_and_settle_items(account, key):
    started = datetime.now(UTC)
    reserve = {
        "request_id": ids.request_id(started), "trace_id": "trace_1", "account_id": account.pk,
        "api_key_id": key.pk, "key_prefix": key.prefix, "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-5", "stream": False, "max_tokens_requested": None, "max_tokens_applied": 10,
        "price_snapshot_id": None, "started_at": started, "user_agent": "test", "amount": Decimal("0.5"),
        "ttl_seconds": 600,
    }  # fmt: skip
    settle = dict.fromkeys(sql.FINAL_COLUMNS) | {
        "request_id": reserve["request_id"], "started_at": started, "cost": Decimal("0.25"),
        "billing_result": "billed", "provider": "openai", "upstream_model": "gpt-5", "status": 200,
        "error_class": "", "error_code": "", "error_message": "", "input_tokens": 10, "output_tokens": 5,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "image_count": 0,
        "tokens_estimated": False, "output_reached_client": True, "first_byte_at": started,
        "finished_at": started, "attempts": "[]", "response_id": "",
    }  # fmt: skip
    return reserve, settle


def explain(cursor, statement: str, params: dict) -> str:
    """EXPLAIN ANALYZE of `statement` run as the gateway's pool runs it once prepared: a PREPAREd
    statement EXECUTEd (an EXPLAIN of the statement itself is planned with its values)."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    cursor.execute("PREPARE probe AS " + re.sub(r"%\((\w+)\)s", number, statement))
    args = ", ".join(["%s"] * len(names))
    explained = cursor.execute(
        f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE probe({args})", [params[n] for n in names]
    ).fetchall()
    cursor.execute("DEALLOCATE probe")
    return "\n".join(line for (line,) in explained)


@pytest.mark.parametrize("plan", ["custom", "generic"])
def test_the_settle_reads_one_partition_and_stays_a_hot_update(plan):
    account = AccountFactory(credit=Decimal("10"))
    key, _ = services.key_create(account=account, name="k")
    partitions.partitions_ensure(now=LONG_AGO)  # more partitions to skip
    reserve, settle = reserve_and_settle_items(account, key)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        raw.execute("SET LOCAL plan_cache_mode = %s" % ("force_generic_plan" if plan == "generic" else "auto"))
        [(_, hold_id)] = raw.execute(sql.RESERVE_ONE, reserve).fetchall()
        settle["hold_id"] = hold_id
        here = partitions.partition_name(THIS_MONTH)
        updates = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = %s"
        before = raw.execute(updates, [here]).fetchone()  # counts not yet reported may be an earlier test's
        lines = explain(raw, sql.SETTLE_ONE, settle)
        scanned = [line for line in lines.splitlines() if " on usage_usagerecord_" in line and "Scan" in line]
        assert scanned and all(here in line for line in scanned), lines
        if plan == "generic":
            assert "Subplans Removed" in lines, lines  # pruned when the plan starts
        after = raw.execute(updates, [here]).fetchone()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # updated once, HOT: no index written
    row = UsageRecord.objects.get(request_id=reserve["request_id"])
    assert (row.billing_result, row.cost_usd, row.started_at) == ("billed", Decimal("0.25"), reserve["started_at"])


def test_a_batched_settle_and_the_streaming_mark_find_their_rows():
    account = AccountFactory(credit=Decimal("10"))
    key, _ = services.key_create(account=account, name="k")
    pairs = [reserve_and_settle_items(account, key) for _ in range(3)]
    with connection.cursor() as cursor:
        raw = cursor.cursor
        rows = json.dumps([reserve for reserve, _ in pairs], default=str)
        holds = dict(raw.execute(sql.RESERVE_MANY, {"rows": rows}).fetchall())
        marks = [{"request_id": r["request_id"], "first_byte_at": r["started_at"], "output_reached_client": True}
                 for r, _ in pairs]  # fmt: skip
        marks[0]["started_at"] = pairs[0][0]["started_at"]  # with or without the row's start
        raw.execute(sql.MARK_STREAMING, {"rows": json.dumps(marks, default=str)})
        assert raw.rowcount == 3
        settles = [settle | {"hold_id": holds[settle["request_id"]]} for _, settle in pairs]
        settled = raw.execute(sql.SETTLE_MANY, {"rows": json.dumps(settles, default=str)}).fetchall()
    assert len(settled) == 3
    assert UsageRecord.objects.filter(account=account, billing_result="billed", output_reached_client=True).count() == 3


def test_the_daily_task_and_the_command_make_the_same_partitions(capsys):
    from django.core.management import call_command

    from usage import tasks

    make_row(AccountFactory(), at=LONG_AGO)  # a stray row: its month is made, the row moved
    assert tasks.usage_partitions.apply().get() == ["usage_usagerecord_p2020_01"]
    call_command("usage_partitions")
    out = capsys.readouterr().out
    assert "made: none" in out and "2020-01" in out and f"{THIS_MONTH:%Y-%m}" in out


def test_every_partition_leaves_room_on_its_pages_for_hot_settles():
    # Made by the migration, made later, DEFAULT: each keeps a fifth of a page free (migration 0012),
    # so that a settle's new row version fits beside the old one (a HOT update, no index written).
    partitions.partitions_ensure(now=LONG_AGO)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_usagerecord'::regclass"
        )
        found = dict(cursor.fetchall())
    assert partitions.partition_name(LONG_AGO) in found and partitions.partition_name(NOW) in found
    assert "usage_usagerecord_default" in found
    assert {name: options for name, options in found.items() if "fillfactor=80" not in (options or [])} == {}
