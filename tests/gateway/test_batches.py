"""Requests of one account that reach the ledger together share one statement (usage/gateway/batch.py):
the batched reserve and settle keep every ledger invariant, a batch the account cannot cover as a
whole falls back to one request at a time, and a busy account really is batched."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from django.db import connection

from billing import selectors, services
from billing.models import Account, Hold, LedgerEntry
from tests.factories import AccountFactory
from tests.gateway.support import MSG, assert_ledger, cost_of, wait_until
from usage.gateway import sql
from usage.gateway.app import gateway as gateway_app
from usage.gateway.batch import rows_json
from usage.models import UsageRecord


def reserve_items(key, count: int, amount: Decimal) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "request_id": f"req_{uuid.uuid4().hex}",
            "trace_id": uuid.uuid4().hex,
            "account_id": key.account_id,
            "api_key_id": key.pk,
            "key_prefix": key.prefix,
            "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-5",
            "stream": False,
            "max_tokens_requested": 10,
            "max_tokens_applied": 10,
            "price_snapshot_id": None,
            "started_at": now,
            "user_agent": "test",
            "amount": amount,
            "ttl_seconds": 600,
        }
        for _ in range(count)
    ]


def settle_item(item: dict, hold_id: int, cost: Decimal, **tokens) -> dict:
    return {
        "request_id": item["request_id"],
        "started_at": item["started_at"],  # with request_id, the row's key (its partition)
        "hold_id": hold_id,
        "cost": cost,
        "billing_result": "billed" if cost else "not_billed",
        "route_id": None,
        "provider": "openai",
        "upstream_model": "gpt-5",
        "status": 200,
        "error_class": "",
        "error_code": "",
        "error_message": "",
        "input_tokens": tokens.get("input_tokens", 0),
        "output_tokens": tokens.get("output_tokens", 0),
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "image_count": 0,
        "tokens_estimated": False,
        "output_reached_client": True,
        "client_disconnected_at": None,
        "first_byte_at": datetime.now(UTC),
        "finished_at": datetime.now(UTC),
        "attempts": json.dumps([{"attempt": 1, "status": 200}]),
    }


def post_all(gateway, secrets: list[str], count: int) -> list[int]:
    """`count` chat completions at once, key i mod len(secrets): their status codes."""

    def call(index):
        return httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-5", "messages": MSG, "max_tokens": 10},
            headers={"Authorization": f"Bearer {secrets[index % len(secrets)]}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def assert_running_balance(account_id: int, credit: Decimal) -> None:
    """Each usage entry's balance_after is the balance after it, in id order."""
    running = credit
    for entry in LedgerEntry.objects.filter(account_id=account_id, kind="usage").order_by("id"):
        running += entry.amount
        assert entry.balance_after == running
    assert Account.objects.get(pk=account_id).balance == running


def run(statement: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


def test_a_batched_reserve_and_settle_keep_the_ledger_exact(transactional_db):
    account = AccountFactory(credit=Decimal("1"))
    key, _ = services.key_create(account=account, name="batch")
    items = reserve_items(key, 3, Decimal("0.1"))
    holds = dict(run(sql.RESERVE_MANY, {"rows": rows_json(items)}))
    assert set(holds) == {item["request_id"] for item in items}
    account.refresh_from_db()
    assert account.reserved == Decimal("0.3")
    assert UsageRecord.objects.filter(request_id__in=holds, billing_result="pending").count() == 3

    costs = [Decimal("0.012345678901"), Decimal("0"), Decimal("0.5")]  # the last is capped at its hold
    settles = [settle_item(i, holds[i["request_id"]], cost) for i, cost in zip(items, costs, strict=True)]
    finished = dict(run(sql.SETTLE_MANY, {"rows": rows_json(settles)}))
    charged = [Decimal("0.012345678901"), Decimal("0"), Decimal("0.1")]
    assert finished == {item["request_id"]: cost for item, cost in zip(items, charged, strict=True)}
    account = assert_ledger(account.pk, spent=sum(charged), credit=Decimal("1"))

    # One entry per charge, in hold order, each carrying the running balance.
    entries = list(LedgerEntry.objects.filter(account=account, kind="usage").order_by("id"))
    assert [entry.amount for entry in entries] == [-Decimal("0.012345678901"), -Decimal("0.1")]
    assert [entry.hold_id for entry in entries] == sorted(entry.hold_id for entry in entries)
    running = Decimal("1")
    for entry in entries:
        running += entry.amount
        assert entry.balance_after == running
    assert entries[-1].balance_after == account.balance == selectors.ledger_sum(account_id=account.pk)
    rows = {row.request_id: row for row in UsageRecord.objects.filter(request_id__in=holds)}
    assert [rows[item["request_id"]].billing_result for item in items] == ["billed", "not_billed", "billed"]
    # the capped one says what it did not charge; the others charged everything
    assert [rows[item["request_id"]].uncharged_usd for item in items] == [0, 0, Decimal("0.4")]
    assert rows[items[0]["request_id"]].attempts == [{"attempt": 1, "status": 200}]
    assert Hold.objects.get(pk=holds[items[1]["request_id"]]).state == Hold.State.RELEASED

    # A replay of the whole batch finds no open hold and no pending row: nothing changes.
    assert run(sql.SETTLE_MANY, {"rows": rows_json(settles)}) == []
    assert_ledger(account.pk, spent=sum(charged), credit=Decimal("1"))
    assert LedgerEntry.objects.filter(account=account, kind="usage").count() == 2


def test_a_batch_the_account_cannot_cover_reserves_nothing(transactional_db):
    account = AccountFactory(credit=Decimal("0.25"))
    key, _ = services.key_create(account=account, name="batch")
    items = reserve_items(key, 3, Decimal("0.1"))
    assert run(sql.RESERVE_MANY, {"rows": rows_json(items)}) == []
    account.refresh_from_db()
    assert account.reserved == 0
    assert not Hold.objects.filter(account=account).exists()
    assert not UsageRecord.objects.filter(api_key=key).exists()


def test_one_batch_serves_several_accounts_each_on_its_own_credit(transactional_db):
    rich, poor = AccountFactory(credit=Decimal("1")), AccountFactory(credit=Decimal("0.15"))
    rich_key, _ = services.key_create(account=rich, name="rich")
    poor_key, _ = services.key_create(account=poor, name="poor")
    items = reserve_items(poor_key, 2, Decimal("0.1")) + reserve_items(rich_key, 2, Decimal("0.1"))
    holds = dict(run(sql.RESERVE_MANY, {"rows": rows_json(items)}))
    # The poor account cannot cover both of its requests, so neither is reserved by this statement
    # (the gateway then retries them one by one); the rich one gets both.
    assert set(holds) == {item["request_id"] for item in items[2:]}
    assert Account.objects.get(pk=poor.pk).reserved == 0
    settles = [settle_item(i, holds[i["request_id"]], Decimal("0.03")) for i in items[2:]]
    more = reserve_items(poor_key, 1, Decimal("0.1"))
    holds |= dict(run(sql.RESERVE_MANY, {"rows": rows_json(more + reserve_items(rich_key, 1, Decimal("0.1")))}))
    settles.append(settle_item(more[0], holds[more[0]["request_id"]], Decimal("0.02")))
    finished = dict(run(sql.SETTLE_MANY, {"rows": rows_json(settles)}))
    assert len(finished) == 3
    assert_ledger(poor.pk, spent=Decimal("0.02"), credit=Decimal("0.15"))
    rich_account = Account.objects.get(pk=rich.pk)
    assert rich_account.balance == Decimal("0.94") == selectors.ledger_sum(account_id=rich.pk)
    assert rich_account.reserved == Decimal("0.1")  # the second statement's rich hold is still open


def test_concurrent_requests_of_many_accounts_share_statements_without_deadlock(gateway):
    accounts = [AccountFactory(credit=Decimal("1")) for _ in range(12)]
    secrets = [services.key_create(account=account, name="many")[1] for account in accounts]
    gateway.upstream.script(delay_first_byte_ms=200, tokens={"prompt": 10, "completion": 8}, times=48)
    state = gateway_app.state
    before = dict(state.settles.sizes)

    assert post_all(gateway, secrets, 48) == [200] * 48
    assert any(count > before.get(size, 0) for size, count in state.settles.sizes.items() if size > 1)
    each = cost_of(input_tokens=10, output_tokens=8)
    for account in accounts:
        assert_ledger(account.pk, spent=4 * each, credit=Decimal("1"))
        assert_running_balance(account.pk, Decimal("1"))


def test_concurrent_requests_of_one_account_share_statements_and_bill_exactly(gateway):
    account = AccountFactory(credit=Decimal("10"))
    _, secret = services.key_create(account=account, name="busy")
    gateway.upstream.script(delay_first_byte_ms=300, tokens={"prompt": 10, "completion": 8}, times=40)
    state = gateway_app.state
    before = {name: dict(b.sizes) for name, b in (("reserve", state.reserves), ("settle", state.settles))}

    assert post_all(gateway, [secret], 40) == [200] * 40

    batched = {
        name: {size: count - before[name].get(size, 0) for size, count in b.sizes.items() if size > 1}
        for name, b in (("reserve", state.reserves), ("settle", state.settles))
    }
    assert any(batched["reserve"].values()) and any(batched["settle"].values()), batched
    rows = UsageRecord.objects.filter(api_key__account=account)
    assert rows.count() == 40
    assert {(row.billing_result, row.cost_usd) for row in rows} == {
        ("billed", cost_of(input_tokens=10, output_tokens=8))
    }
    assert_ledger(account.pk, spent=40 * cost_of(input_tokens=10, output_tokens=8), credit=Decimal("10"))
    assert_running_balance(account.pk, Decimal("10"))


def test_requests_the_account_cannot_cover_together_are_reserved_one_by_one(gateway):
    body = {"model": "gpt-5", "messages": MSG, "max_tokens": 10}
    probe = gateway.post("/v1/chat/completions", json=body)  # learn one request's hold from its ledger
    hold = Hold.objects.get(request_id=probe.headers["x-request-id"]).amount
    account = AccountFactory(credit=hold * 5)
    _, secret = services.key_create(account=account, name="tight")
    # The upstream holds every answer until the test opens the gate, so no request can settle (and
    # free part of its hold) before all 20 have been reserved or refused, however slow the machine.
    gateway.upstream.script(gate="credit", tokens={"prompt": 10, "completion": 8}, times=20)

    with ThreadPoolExecutor(1) as pool:
        statuses = pool.submit(post_all, gateway, [secret], 20)
        rows = UsageRecord.objects.filter(api_key__account=account)
        wait_until(lambda: rows.count() == 20, what="20 usage rows: the reserved pending and the refused")
        assert rows.filter(billing_result="pending").count() == 5
        assert gateway.upstream.waiting_at("credit") == 5
        gateway.upstream.open_gate("credit")
        assert sorted(statuses.result()) == [200] * 5 + [402] * 15

    assert UsageRecord.objects.filter(api_key__account=account).count() == 20
    assert_ledger(account.pk, spent=5 * cost_of(input_tokens=10, output_tokens=8), credit=hold * 5)


def test_settle_plans_find_holds_and_rows_by_index_even_when_planned_on_empty_tables(transactional_db):
    """A prepared statement's generic plan is made once, often while the tables are still empty
    (a new database, autovacuum off); it must still look holds and usage rows up by their keys,
    not scan them (bench/README.md: a soak fell from ~1,500 to ~260 req/s when it did)."""
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("PREPARE settle_many(text) AS " + sql.SETTLE_MANY.replace("%(rows)s", "$1"))
        try:
            cursor.execute("EXPLAIN EXECUTE settle_many('[]')")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE settle_many")
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("RESET enable_seqscan")
    assert "billing_hold_pkey" in plan and "Index Cond: (id = ANY" in plan, plan
    # Each month's partition (usage migration 0010) by its key: request_id, or started_at (to the µs).
    assert "Seq Scan on usage_usagerecord" not in plan, plan
    assert "Index Cond: ((request_id)::text = ANY" in plan or "Index Cond: (started_at = ANY" in plan, plan
