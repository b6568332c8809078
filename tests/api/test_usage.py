"""The usage page (issue 11, Deliver 5): the account's usage rows, newest first, cursor-paginated,
filterable, each with its frozen prices, tokens, cost, timings and attempts (routes by name only);
one row by request_id. Members read it as owners do; another account's rows are never reached."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import services
from billing.models import ApiKey, Membership, Route
from billing.selectors import price_snapshot_current
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.factories import CatalogModelFactory, make_visible_model
from usage.models import UsageRecord

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
_numbers = itertools.count(1)


def make_row(account, *, key: ApiKey | None = None, at: datetime | None = None, **fields) -> UsageRecord:
    """A finished usage row as the gateway writes it (rows move no money: no ledger entry here)."""
    n = next(_numbers)
    started = at or T0 - timedelta(minutes=n)
    values = {
        "request_id": f"req_{n:032x}",
        "trace_id": f"trace_{n:032x}",
        "account": account,
        "api_key": key,
        "key_prefix": key.prefix if key else "",
        "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-5",
        "provider": "openai",
        "upstream_model": "gpt-5",
        "status": 200,
        "billing_result": UsageRecord.BillingResult.BILLED,
        "started_at": started,
        "first_byte_at": started + timedelta(milliseconds=250),
        "finished_at": started + timedelta(milliseconds=1500),
    }
    return UsageRecord.objects.create(**(values | fields))


@pytest.fixture
def catalog(db):
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))
    route = Route.objects.get(model=model)
    return {"model": model, "route": route, "snapshot": price_snapshot_current(model)}


@pytest.fixture
def keys(alice, bob):
    mine, my_secret = services.key_create(account=alice.account, name="mine")
    theirs, their_secret = services.key_create(account=bob.account, name="theirs")
    return {"mine": mine, "mine_secret": my_secret, "theirs": theirs, "theirs_secret": their_secret}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["request_id"] for row in response.json()["results"]]


@pytest.mark.django_db
def test_a_row_shows_its_prices_tokens_cost_timings_and_attempts_by_route_name(alice, keys, catalog):
    route, snapshot = catalog["route"], catalog["snapshot"]
    row = make_row(
        alice.account,
        key=keys["mine"],
        route=route,
        stream=True,
        input_tokens=1200,
        output_tokens=300,
        cached_input_tokens=800,
        cache_write_tokens=5,
        reasoning_tokens=100,
        max_tokens_requested=100_000,
        max_tokens_applied=16_384,
        cost_usd=Decimal("0.004600000001"),
        uncharged_usd=Decimal("0.000000000001"),
        price_snapshot=snapshot,
        output_reached_client=True,
        attempts=[
            {"attempt": 1, "route_id": route.pk, "provider": "openai", "upstream_model": "gpt-5", "status": 502,
             "error": "upstream_error", "ms": 12.5},
            {"attempt": 2, "route_id": route.pk, "provider": "openai", "upstream_model": "gpt-5", "status": 200,
             "error": "", "ms": 1400.0},
        ],
    )  # fmt: skip
    response = alice.client.get(alice.url(f"/usage/{row.request_id}"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "api_key": keys["mine"].pk,
        "key_prefix": keys["mine"].prefix,
        "endpoint": "/v1/chat/completions",
        "model": "gpt-5",
        "provider": "openai",
        "route": route.name,
        "upstream_model": "gpt-5",
        "stream": True,
        "status": 200,
        "error_class": "",
        "error_code": "",
        "error_message": "",
        "tokens": {"input": 1200, "output": 300, "cached_input": 800, "cache_write": 5, "reasoning": 100},
        "image_count": 0,
        "tokens_estimated": False,
        "max_tokens_requested": 100_000,
        "max_tokens_applied": 16_384,
        "cost_usd": "0.004600000001",
        "uncharged_usd": "0.000000000001",
        "billing_result": "billed",
        "price_snapshot": {
            "id": snapshot.pk,
            "model": "gpt-5",
            "currency": "USD",
            "input_per_mtok": "1.2500000000",  # tests/factories.py DEFAULT_PRICES, frozen
            "output_per_mtok": "10.0000000000",
            "cached_input_per_mtok": "0.1250000000",
            "cache_write_per_mtok": "0.0000000000",
            "per_image": "0.0000000000",
            "per_request": "0.0000000000",
        },
        "started_at": iso(row.started_at),
        "first_byte_at": iso(row.first_byte_at),
        "finished_at": iso(row.finished_at),
        "time_to_first_byte_ms": 250,
        "duration_ms": 1500,
        "output_reached_client": True,
        "client_disconnected_at": None,
        "attempts": [
            {"attempt": 1, "route": route.name, "provider": "openai", "upstream_model": "gpt-5", "status": 502,
             "error": "upstream_error", "ms": 12.5},
            {"attempt": 2, "route": route.name, "provider": "openai", "upstream_model": "gpt-5", "status": 200,
             "error": "", "ms": 1400.0},
        ],
        "ticket": None,
    }  # fmt: skip
    # the same row in the list
    listed = alice.client.get(alice.url("/usage")).json()["results"]
    assert listed == [body]


@pytest.mark.django_db
def test_rows_are_newest_first_and_the_cursor_walks_them_once(alice):
    same = T0 - timedelta(hours=1)
    made = [make_row(alice.account, at=T0 - timedelta(minutes=i)) for i in range(5)]
    made += [make_row(alice.account, at=same, request_id=f"req_tie_{c}") for c in "abc"]
    expected = [r.request_id for r in sorted(made, key=lambda r: (r.started_at, r.request_id), reverse=True)]
    seen, url = [], alice.url("/usage?page_size=3")
    while url:
        page = alice.client.get(url)
        seen += ids(page)
        url = page.json()["next"]
    assert seen == expected
    assert seen[-3:] == ["req_tie_c", "req_tie_b", "req_tie_a"]  # request_id breaks the tie


@pytest.fixture
def spread(alice, keys):
    """One row per distinguishing value, all of alice's account."""
    mine = keys["mine"]
    other_key, _ = services.key_create(account=alice.account, name="other")
    rows = {
        "plain": make_row(alice.account, key=mine, at=T0 - timedelta(days=3)),
        "claude": make_row(alice.account, key=mine, model_requested="claude-sonnet-4-6", endpoint="/v1/messages"),
        "other_key": make_row(alice.account, key=other_key),
        "limited": make_row(
            alice.account, key=mine, status=429, error_class="quota_or_rate_limit",
            error_code="rate_limit_exceeded", billing_result="not_billed",
        ),
        "cut": make_row(
            alice.account, key=mine, stream=True, error_class="stream_interrupted",
            error_code="upstream_stream_interrupted", billing_result="failed_but_billable",
            cost_usd=Decimal("0.01"),
        ),
    }  # fmt: skip
    rows["other_key_obj"] = other_key
    return rows


FILTERS = [
    ("model", "claude-sonnet-4-6", ["claude"]),
    ("endpoint", "/v1/messages", ["claude"]),
    ("status", "429", ["limited"]),
    ("error_class", "quota_or_rate_limit", ["limited"]),
    ("error_code", "upstream_stream_interrupted", ["cut"]),
    ("billing_result", "failed_but_billable", ["cut"]),
    ("billing_result", "not_billed", ["limited"]),
    ("stream", "true", ["cut"]),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "value", "expected"), FILTERS)
def test_each_filter_selects_its_rows(alice, spread, name, value, expected):
    response = alice.client.get(alice.url("/usage"), {name: value})
    assert ids(response) == [spread[e].request_id for e in expected]


@pytest.mark.django_db
def test_filters_by_key_time_and_ids(alice, keys, spread):
    url = alice.url("/usage")
    other = spread["other_key_obj"]
    assert ids(alice.client.get(url, {"api_key": other.pk})) == [spread["other_key"].request_id]
    assert ids(alice.client.get(url, {"key_prefix": other.prefix})) == [spread["other_key"].request_id]
    everything_but_plain = {r.request_id for k, r in spread.items() if k not in ("plain", "other_key_obj")}
    after = alice.client.get(url, {"started_after": (T0 - timedelta(days=1)).isoformat()})
    assert set(ids(after)) == everything_but_plain
    before = alice.client.get(url, {"started_before": (T0 - timedelta(days=1)).isoformat()})
    assert ids(before) == [spread["plain"].request_id]
    cut = spread["cut"]
    assert ids(alice.client.get(url, {"request_id": cut.request_id})) == [cut.request_id]
    assert ids(alice.client.get(url, {"trace_id": cut.trace_id})) == [cut.request_id]
    assert ids(alice.client.get(url, {"stream": "false", "model": "gpt-5", "status": 200})) == [
        r.request_id for r in sorted(
            (spread["other_key"], spread["plain"]), key=lambda r: r.started_at, reverse=True
        )
    ]  # fmt: skip
    # combining filters narrows
    assert ids(alice.client.get(url, {"api_key": keys["mine"].pk, "error_class": "stream_interrupted"})) == [
        cut.request_id
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"started_after": "yesterday"}, "started_after"),
        ({"started_before": "2026-13-01T00:00:00Z"}, "started_before"),
        ({"started_after": "0001-01-01T00:00:00+05:00"}, "started_after"),  # before year 1 in UTC
        ({"status": "ok"}, "status"),
        ({"status": "99"}, "status"),
        ({"api_key": "abc"}, "api_key"),
        ({"error_class": "oops"}, "error_class"),
        ({"billing_result": "free"}, "billing_result"),
        ({"stream": "maybe"}, "stream"),
        ({"ordering": "cost_usd"}, "ordering"),
        ({"modle": "gpt-5"}, "modle"),
        ({"page_size": "201"}, "page_size"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_bad_values_are_400s_naming_the_parameter(alice, params, field):
    assert_error(alice.client.get(alice.url("/usage"), params), 400, "invalid_request", {field})


@pytest.mark.django_db
def test_a_time_with_an_offset_postgresql_would_refuse_is_read_in_utc(alice):
    row = make_row(alice.account, at=datetime(170, 1, 27, 12, 0, tzinfo=UTC))
    # -20:29 is beyond PostgreSQL's ±15:59: the filter converts it to UTC (0170-01-27T12:22:36Z) first
    assert ids(alice.client.get(alice.url("/usage"), {"started_before": "0170-01-26T15:53:36-20:29"})) == [
        row.request_id
    ]


@pytest.mark.django_db
def test_a_member_reads_the_usage_page_as_an_owner_does(alice):
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    row = make_row(alice.account)
    assert ids(member.client.get(member.url("/usage"))) == [row.request_id]
    assert member.client.get(member.url(f"/usage/{row.request_id}")).status_code == 200


@pytest.mark.django_db
def test_another_accounts_rows_are_never_reached(alice, bob, keys):
    mine = make_row(alice.account, key=keys["mine"])
    theirs = make_row(bob.account, key=keys["theirs"])
    assert ids(alice.client.get(alice.url("/usage"))) == [mine.request_id]
    # their row by id, their key as a filter, their request_id as a filter, their account's URLs
    assert_error(alice.client.get(alice.url(f"/usage/{theirs.request_id}")), 404, "not_found")
    assert ids(alice.client.get(alice.url("/usage"), {"api_key": keys["theirs"].pk})) == []
    assert ids(alice.client.get(alice.url("/usage"), {"request_id": theirs.request_id})) == []
    assert ids(alice.client.get(alice.url("/usage"), {"key_prefix": keys["theirs"].prefix})) == []
    for tail in ("/usage", f"/usage/{theirs.request_id}", f"/usage/{mine.request_id}"):
        assert_error(alice.client.get(bob.url(tail)), 404, "not_found")
    assert_error(alice.client.get("/api/v1/accounts/999999/usage"), 404, "not_found")
    assert_error(alice.client.get(alice.url("/usage/req_unknown")), 404, "not_found")


@pytest.mark.django_db
def test_no_response_carries_a_key_secret_a_hash_or_an_upstream_secret(alice, keys, catalog):
    route = catalog["route"]
    row = make_row(
        alice.account, key=keys["mine"], route=route, price_snapshot=catalog["snapshot"],
        attempts=[{"attempt": 1, "route_id": route.pk, "provider": "openai", "upstream_model": "gpt-5",
                   "status": 200, "error": "", "ms": 1.0}],
    )  # fmt: skip
    route.refresh_from_db()
    forbidden = [keys["mine_secret"], keys["mine"].key_hash, "upstream-test-secret", route.base_url]
    forbidden += [route.secret_encrypted] if route.secret_encrypted else []
    for url in (alice.url("/usage"), alice.url(f"/usage/{row.request_id}")):
        text = alice.client.get(url).content.decode()
        assert row.request_id in text
        for secret in forbidden:
            assert secret not in text, url


@pytest.mark.django_db
def test_a_page_costs_the_same_few_queries_however_many_rows(alice, keys, catalog, django_assert_max_num_queries):
    route, snapshot = catalog["route"], catalog["snapshot"]
    second = Route.objects.create(
        model=catalog["model"], name="backup", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="x"
    )
    for _ in range(40):
        make_row(
            alice.account, key=keys["mine"], route=route, price_snapshot=snapshot,
            attempts=[{"attempt": 1, "route_id": second.pk, "status": 502, "error": "upstream_error", "ms": 1.0},
                      {"attempt": 2, "route_id": route.pk, "status": 200, "error": "", "ms": 2.0}],
        )  # fmt: skip
    alice.client.get(alice.url("/usage"))  # the token's last_used_at is written once
    # token, membership, the page (rows + snapshots in one join), the route names, the tickets
    with django_assert_max_num_queries(5):
        response = alice.client.get(alice.url("/usage?page_size=40"))
    rows = response.json()["results"]
    assert len(rows) == 40
    assert {(a["route"]) for r in rows for a in r["attempts"]} == {"backup", route.name}


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(line for (line,) in cursor.fetchall())


@pytest.mark.django_db
def test_the_first_page_is_an_index_scan_filtered_or_not(alice, bob, keys):
    """On a few thousand rows of two accounts, with fresh statistics, the first page of each kind
    reads an index newest first and never scans the table (bench/ measures the 1M/10M case)."""
    models = ["gpt-5", "gpt-4.1", "claude-sonnet-4-6", "gemini-3-pro-image-preview"]
    rows = []
    for i in range(4000):
        account, key = (alice.account, keys["mine"]) if i % 4 else (bob.account, keys["theirs"])
        failed = i % 50 == 0
        rows.append(
            UsageRecord(
                request_id=f"req_bulk_{i:06d}", trace_id=f"trace_bulk_{i:06d}", account=account, api_key=key,
                key_prefix=key.prefix, endpoint="/v1/chat/completions", model_requested=models[i % 7 % 4],
                status=502 if failed else 200, error_class="upstream_or_platform_error" if failed else "",
                error_code="upstream_error" if failed else "", billing_result="not_billed" if failed else "billed",
                started_at=T0 - timedelta(seconds=i * 37),
            )
        )  # fmt: skip
    UsageRecord.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE usage_usagerecord")
        # The table is partitioned by month (usage migration 0010): the partitions holding these rows
        # are the ones never scanned whole (an empty one may be: it costs nothing).
        cursor.execute("SELECT DISTINCT tableoid::regclass::text FROM usage_usagerecord")
        holding = [name for (name,) in cursor.fetchall()]
    for params in ({}, {"model": "claude-sonnet-4-6"}, {"error_class": "upstream_or_platform_error"},
                   {"error_code": "upstream_error"}, {"api_key": keys["mine"].pk}):  # fmt: skip
        with CaptureQueriesContext(connection) as queries:
            response = alice.client.get(alice.url("/usage"), params)
        assert response.status_code == 200 and response.json()["results"], params
        [page_sql] = [q["sql"] for q in queries.captured_queries if 'FROM "usage_usagerecord"' in q["sql"]]
        plan = _plan(page_sql)
        assert not any(f"Seq Scan on {name} " in plan for name in holding), (params, plan)
        assert "Index Scan" in plan or "Index Only Scan" in plan, (params, plan)
    # the admin's list (every account, newest first) has its own index now
    admin_plan = _plan(str(UsageRecord.objects.order_by("-started_at", "-id").values("id")[:100].query))
    assert "usage_time_" in admin_plan, admin_plan  # usage_time_pYYYY_MM: each partition's
    assert not any(f"Seq Scan on {name} " in admin_plan for name in holding), admin_plan
