"""The usage summary (issue 11, Deliver 5): totals and a time series by hour or day, grouped by
model, key or endpoint — GROUP BY queries over the hourly roll-up and the rows — and the same
aggregates in the shapes of OpenAI's organization Usage API (completions) and Costs API, read with
the official OpenAI SDK and checked field by field against OpenAI's published example objects."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx2
import openai
import pytest
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from openai.types.admin.organization.usage_completions_response import (
    DataResultOrganizationUsageCompletionsResult,
    UsageCompletionsResponse,
)
from openai.types.admin.organization.usage_costs_response import DataResultOrganizationCostsResult, UsageCostsResponse

from billing import services
from billing.models import Membership
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.api.test_usage import make_row
from usage import rollup

D0 = datetime(2026, 11, 10, tzinfo=UTC)
DAY = timedelta(days=1)
H = timedelta(hours=1)


def at(day: int, hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    return D0 + day * DAY + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


# OpenAI's published examples (the API reference, "Usage" → "Completions" and "Costs": the
# example response of GET /v1/organization/usage/completions?start_time=1730419200&limit=1, the
# "Completions usage object" and the "Costs object"; as copied in AmritanshuRai/calorie-tracker-ai
# usage-docs.md). Ours must have every one of their fields, with the same JSON types.
OPENAI_COMPLETIONS_PAGE = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": 1730419200,
            "end_time": 1730505600,
            "results": [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 1000,
                    "output_tokens": 500,
                    "input_cached_tokens": 800,
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": 5,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": None,
                    "model": None,
                    "batch": None,
                    "service_tier": None,
                }
            ],
        }
    ],
    "has_more": True,
    "next_page": "page_AAAAAGdGxdEiJdKOAAAAAGcqsYA=",
}
OPENAI_COMPLETIONS_RESULT = {
    "object": "organization.usage.completions.result",
    "input_tokens": 5000,
    "output_tokens": 1000,
    "input_cached_tokens": 4000,
    "input_audio_tokens": 300,
    "output_audio_tokens": 200,
    "num_model_requests": 5,
    "project_id": "proj_abc",
    "user_id": "user-abc",
    "api_key_id": "key_abc",
    "model": "gpt-4o-mini-2024-07-18",
    "batch": False,
    "service_tier": "default",
}
OPENAI_COSTS_PAGE = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": 1730419200,
            "end_time": 1730505600,
            "results": [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 0.06, "currency": "usd"},
                    "line_item": None,
                    "project_id": None,
                }
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}
OPENAI_COSTS_RESULT = {
    "object": "organization.costs.result",
    "amount": {"value": 0.06, "currency": "usd"},
    "line_item": "Image models",
    "project_id": "proj_abc",
}


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_shaped_like(ours: dict, theirs: dict, sdk_model) -> None:
    """Every field of OpenAI's object is in ours with the same JSON type (null where OpenAI's may be
    null: a grouping field we do not group by), and every field we add is one OpenAI's SDK knows."""
    for name, value in theirs.items():
        assert name in ours, name
        if isinstance(value, dict):
            assert_shaped_like(ours[name], value, None)
        elif ours[name] is not None and value is not None:
            assert json_type(ours[name]) == json_type(value), (name, ours[name], value)
    if sdk_model is not None:
        assert set(ours) - set(theirs) <= set(sdk_model.model_fields), set(ours) - set(theirs)


@pytest.fixture
def usage(alice, bob):
    key_a, _ = services.key_create(account=alice.account, name="a")
    key_b, _ = services.key_create(account=alice.account, name="b")
    theirs, _ = services.key_create(account=bob.account, name="theirs")
    messages, images = "/v1/messages", "/v1/images/generations"
    rows = {
        "r1": make_row(alice.account, key=key_a, at=at(0, 3), input_tokens=1000, cost_usd=Decimal("0.00125")),
        "r2": make_row(
            alice.account, key=key_a, at=at(0, 10, 15), input_tokens=100, output_tokens=50, cached_input_tokens=20,
            reasoning_tokens=10, cost_usd=Decimal("0.001"),
        ),
        "r3": make_row(
            alice.account, key=key_a, at=at(0, 11, 30), model_requested="claude-sonnet-4-6", endpoint=messages,
            input_tokens=200, output_tokens=20, cache_write_tokens=30, cost_usd=Decimal("0.002"),
        ),
        "r4": make_row(
            alice.account, key=key_b, at=at(0, 11, 45), status=429, error_class="quota_or_rate_limit",
            error_code="rate_limit_exceeded", billing_result="not_billed",
        ),
        "r5": make_row(
            alice.account, key=key_b, at=at(1, 9), stream=True, error_class="stream_interrupted",
            error_code="upstream_stream_interrupted", billing_result="failed_but_billable", input_tokens=10,
            output_tokens=5, cost_usd=Decimal("0.00000002"),
        ),
        "r6": make_row(
            alice.account, key=key_a, at=at(2, 23, 59, 59), model_requested="gpt-image-2", endpoint=images,
            image_count=2, cost_usd=Decimal("0.08"),
        ),
        "later": make_row(alice.account, key=key_a, at=at(3), input_tokens=5, cost_usd=Decimal("1")),
        "bobs": make_row(bob.account, key=theirs, at=at(0, 12), input_tokens=99_999, cost_usd=Decimal("9")),
    }  # fmt: skip
    return {"key_a": key_a, "key_b": key_b, "theirs": theirs, **rows}


def metrics(requests, errors=(), *, input=0, output=0, cached_input=0, cache_write=0, reasoning=0, images=0,
            cost="0.000000000000") -> dict:  # fmt: skip
    classes = ("invalid_request", "auth_or_key_scope", "quota_or_rate_limit", "model_unavailable",
               "upstream_or_platform_error", "stream_interrupted")  # fmt: skip
    return {
        "requests": requests,
        "errors": len(errors),
        "errors_by_class": {c: list(errors).count(c) for c in classes},
        "tokens": {
            "input": input, "output": output, "cached_input": cached_input, "cache_write": cache_write,
            "reasoning": reasoning,
        },
        "image_count": images,
        "cost_usd": cost,
        "uncharged_usd": "0.000000000000",
    }  # fmt: skip


NO_GROUP = {"model": None, "api_key": None, "key_prefix": None, "endpoint": None}


def summary(caller, **params):
    response = caller.client.get(caller.url("/usage/summary"), params)
    assert response.status_code == 200, response.content
    return response.json()


# --- the dashboard's summary ---------------------------------------------------------------------


@pytest.mark.django_db
def test_totals_and_the_daily_series(alice, usage):
    body = summary(alice, start=D0.isoformat(), end=at(3).isoformat())
    assert body["start"] == "2026-11-10T00:00:00Z" and body["end"] == "2026-11-13T00:00:00Z"
    assert body["bucket"] == "day" and body["group_by"] is None
    assert body["totals"] == metrics(
        6, ["quota_or_rate_limit", "stream_interrupted"], input=1310, output=75, cached_input=20,
        cache_write=30, reasoning=10, images=2, cost="0.084250020000",
    )  # fmt: skip
    assert body["series"] == [
        {"start": "2026-11-10T00:00:00Z", **NO_GROUP, **metrics(
            4, ["quota_or_rate_limit"], input=1300, output=70, cached_input=20, cache_write=30, reasoning=10,
            cost="0.004250000000")},
        {"start": "2026-11-11T00:00:00Z", **NO_GROUP,
         **metrics(1, ["stream_interrupted"], input=10, output=5, cost="0.000000020000")},
        {"start": "2026-11-12T00:00:00Z", **NO_GROUP, **metrics(1, images=2, cost="0.080000000000")},
    ]  # fmt: skip


@pytest.mark.django_db
def test_the_series_by_hour_and_grouped_by_model_key_or_endpoint(alice, usage):
    hourly = summary(alice, start=D0.isoformat(), end=at(1).isoformat(), bucket="hour")["series"]
    assert [(p["start"], p["requests"]) for p in hourly] == [
        ("2026-11-10T03:00:00Z", 1), ("2026-11-10T10:00:00Z", 1), ("2026-11-10T11:00:00Z", 2)
    ]  # fmt: skip
    window = {"start": D0.isoformat(), "end": at(3).isoformat()}
    by_model = summary(alice, **window, group_by="model")
    assert [(p["start"][:10], p["model"], p["requests"], p["cost_usd"]) for p in by_model["series"]] == [
        ("2026-11-10", "claude-sonnet-4-6", 1, "0.002000000000"),
        ("2026-11-10", "gpt-5", 3, "0.002250000000"),
        ("2026-11-11", "gpt-5", 1, "0.000000020000"),
        ("2026-11-12", "gpt-image-2", 1, "0.080000000000"),
    ]
    assert by_model["totals"]["requests"] == 6 and by_model["totals"]["cost_usd"] == "0.084250020000"
    assert all(p["api_key"] is None and p["endpoint"] is None for p in by_model["series"])
    a, b = usage["key_a"], usage["key_b"]
    by_key = summary(alice, **window, group_by="api_key")["series"]
    assert [(p["start"][:10], p["api_key"], p["key_prefix"], p["requests"]) for p in by_key] == [
        ("2026-11-10", a.pk, a.prefix, 3), ("2026-11-10", b.pk, b.prefix, 1),
        ("2026-11-11", b.pk, b.prefix, 1), ("2026-11-12", a.pk, a.prefix, 1),
    ]  # fmt: skip
    by_endpoint = summary(alice, **window, group_by="endpoint")["series"]
    assert [(p["start"][:10], p["endpoint"], p["requests"], p["errors"]) for p in by_endpoint] == [
        ("2026-11-10", "/v1/chat/completions", 3, 1), ("2026-11-10", "/v1/messages", 1, 0),
        ("2026-11-11", "/v1/chat/completions", 1, 1), ("2026-11-12", "/v1/images/generations", 1, 0),
    ]  # fmt: skip


@pytest.mark.django_db
def test_the_range_defaults_to_the_last_30_days(alice):
    now = timezone.now()
    make_row(alice.account, at=now - timedelta(days=2), cost_usd=Decimal("0.5"))
    make_row(alice.account, at=now - timedelta(days=31), cost_usd=Decimal("7"))
    body = summary(alice)
    assert body["totals"]["requests"] == 1 and body["totals"]["cost_usd"] == "0.500000000000"
    end = datetime.fromisoformat(body["end"])
    assert end - datetime.fromisoformat(body["start"]) == timedelta(days=30)
    assert abs(end - now) < timedelta(minutes=1)
    only_end = summary(alice, end=(now - timedelta(days=20)).isoformat())
    assert only_end["totals"]["requests"] == 1 and only_end["totals"]["cost_usd"] == "7.000000000000"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "last week"}, "start"),
        ({"end": "2026-02-30T00:00:00Z"}, "end"),
        ({"start": "2026-11-10T00:00:00Z", "end": "2026-11-10T00:00:00Z"}, "end"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2026-11-10T00:00:00Z"}, "start"),
        ({"start": "2026-10-01T00:00:00Z", "end": "2026-11-10T00:00:00Z", "bucket": "hour"}, "bucket"),
        ({"bucket": "week"}, "bucket"),
        ({"group_by": "user"}, "group_by"),
        ({"model": "gpt-5"}, "model"),
    ],
)
def test_bad_summary_parameters_are_400s_naming_them(alice, params, field):
    assert_error(alice.client.get(alice.url("/usage/summary"), params), 400, "invalid_request", {field})


@pytest.mark.django_db
def test_the_summary_is_few_queries_and_scoped_to_the_account(alice, bob, usage, django_assert_max_num_queries):
    window = {"start": D0.isoformat(), "end": at(3).isoformat(), "group_by": "api_key"}
    summary(alice, **window)  # the token's last_used_at is written once
    with django_assert_max_num_queries(4):  # token, membership, the roll-up's watermark, the rows' GROUP BY
        body = summary(alice, **window)
    rollup.usage_rollup(now=at(5))
    with django_assert_max_num_queries(5):  # … and the roll-up's GROUP BY
        assert summary(alice, **window) == body
    assert usage["theirs"].pk not in {p["api_key"] for p in body["series"]}
    assert summary(bob, **window)["totals"]["requests"] == 1
    for tail in ("/usage/summary", "/organization/usage/completions", "/organization/costs"):
        assert_error(alice.client.get(bob.url(tail), {"start_time": unix(D0)}), 404, "not_found")
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    assert summary(member, **window)["totals"]["requests"] == 6


# --- OpenAI's organization Usage and Costs APIs --------------------------------------------------


@pytest.fixture
def in_process():
    """Django's WSGI app for an HTTP client in this process, inside the test's transaction: as
    Django's test client does, requests must not close the test's database connection."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def admin_client(caller, app) -> openai.OpenAI:
    """OpenAI's SDK, unchanged, pointed at the account: the personal token is its admin key."""
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app))
    return openai.OpenAI(
        api_key="unused",
        admin_api_key=caller.secret,
        base_url=f"http://testserver/api/v1/accounts/{caller.account.pk}",
        http_client=http,
        max_retries=0,
    )


def completions(caller, **params) -> dict:
    response = caller.client.get(caller.url("/organization/usage/completions"), params)
    assert response.status_code == 200, response.content
    return response.json()


def costs(caller, **params):
    return caller.client.get(caller.url("/organization/costs"), params)


@pytest.mark.django_db
def test_completions_usage_is_shaped_field_by_field_like_openais(alice, usage):
    page = completions(alice, start_time=unix(at(0, 7)), end_time=unix(at(3)))
    assert set(page) == set(OPENAI_COMPLETIONS_PAGE)
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    # daily buckets aligned to UTC midnight, the first holding start_time (07:00); r1 (03:00) is before it
    assert [(b["object"], b["start_time"], b["end_time"]) for b in page["data"]] == [
        ("bucket", unix(at(0)), unix(at(1))), ("bucket", unix(at(1)), unix(at(2))), ("bucket", unix(at(2)), unix(at(3)))
    ]  # fmt: skip
    for bucket in page["data"]:
        assert set(bucket) == set(OPENAI_COMPLETIONS_PAGE["data"][0])
        for result in bucket["results"]:
            assert_shaped_like(result, OPENAI_COMPLETIONS_PAGE["data"][0]["results"][0], None)
            assert_shaped_like(result, OPENAI_COMPLETIONS_RESULT, DataResultOrganizationUsageCompletionsResult)
    first = page["data"][0]["results"]
    assert first == [
        {
            "object": "organization.usage.completions.result",
            "input_tokens": 350,  # r2 100 + 20 cached, r3 200 + 30 cache write: OpenAI counts them in
            "output_tokens": 70,
            "input_cached_tokens": 20,
            "input_cache_write_tokens": 30,
            "input_uncached_tokens": 300,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": 3,
            "project_id": None,
            "user_id": None,
            "api_key_id": None,
            "model": None,
            "batch": None,
            "service_tier": None,
        }
    ]
    assert [(r["input_tokens"], r["output_tokens"], r["num_model_requests"]) for r in page["data"][1]["results"]] == [
        (10, 5, 1)
    ]
    assert [r["num_model_requests"] for r in page["data"][2]["results"]] == [1]
    UsageCompletionsResponse.model_validate(page)  # OpenAI's own types accept it


@pytest.mark.django_db
def test_the_openai_sdk_reads_the_account_grouped_filtered_and_page_by_page(alice, usage, in_process):
    client = admin_client(alice, in_process)
    usage_api = client.admin.organization.usage
    grouped = usage_api.completions(start_time=unix(at(0, 7)), end_time=unix(at(3)), group_by=["model", "api_key_id"])
    day0 = {(r.model, r.api_key_id): (r.input_tokens, r.num_model_requests) for r in grouped.data[0].results}
    a, b = str(usage["key_a"].pk), str(usage["key_b"].pk)
    assert day0 == {("claude-sonnet-4-6", a): (230, 1), ("gpt-5", a): (120, 1), ("gpt-5", b): (0, 1)}
    only_claude = usage_api.completions(start_time=unix(D0), end_time=unix(at(3)), models=["claude-sonnet-4-6"])
    assert [[r.input_tokens for r in bucket.results] for bucket in only_claude.data] == [[230], [], []]
    only_b = usage_api.completions(start_time=unix(D0), end_time=unix(at(3)), api_key_ids=[b])
    assert [sum(r.num_model_requests for r in bucket.results) for bucket in only_b.data] == [1, 1, 0]
    # page by page: limit buckets each, next_page passed back as page, until has_more is false
    starts, page, pages = [], None, 0
    while True:
        answer = usage_api.completions(start_time=unix(at(0, 7)), end_time=unix(at(3)), limit=1,
                                       **({"page": page} if page else {}))  # fmt: skip
        pages += 1
        starts += [bucket.start_time for bucket in answer.data]
        if not answer.has_more:
            assert answer.next_page is None
            break
        page = answer.next_page
    assert pages == 3 and starts == [unix(at(0)), unix(at(1)), unix(at(2))]
    # hourly and per-minute buckets
    hourly = usage_api.completions(start_time=unix(at(0, 10)), end_time=unix(at(0, 12)), bucket_width="1h")
    assert [(bk.start_time, sum(r.num_model_requests for r in bk.results)) for bk in hourly.data] == [
        (unix(at(0, 10)), 1), (unix(at(0, 11)), 2)
    ]  # fmt: skip
    minute = usage_api.completions(start_time=unix(at(0, 11, 30)), end_time=unix(at(0, 11, 31)), bucket_width="1m")
    assert [(bk.end_time - bk.start_time, [r.input_tokens for r in bk.results]) for bk in minute.data] == [(60, [230])]
    spent = usage_api.costs(start_time=unix(D0), end_time=unix(at(3)), group_by=["line_item"])
    assert {(r.line_item, r.amount.value, r.amount.currency) for r in spent.data[0].results} == {
        ("claude-sonnet-4-6", 0.002, "usd"), ("gpt-5", 0.00225, "usd")
    }  # fmt: skip


@pytest.mark.django_db
def test_the_default_limits_and_openais_groupings_without_an_openbili_counterpart(alice, usage):
    week = completions(alice, start_time=unix(D0) - 30 * 86400)
    assert len(week["data"]) == 7 and week["has_more"] is True and week["next_page"].startswith("page_")
    assert len(completions(alice, start_time=unix(D0), bucket_width="1h")["data"]) == 24
    assert len(completions(alice, start_time=unix(D0), bucket_width="1m")["data"]) == 60
    assert len(completions(alice, start_time=unix(D0) - 60 * 86400, limit=31)["data"]) == 31
    # an account has no projects, users, batches or tiers: one group, as OpenAI labels it
    odd = completions(alice, start_time=unix(D0), end_time=unix(at(1)), **{"group_by[]": ["project_id", "batch",
                      "service_tier", "user_id"]})["data"][0]["results"]  # fmt: skip
    assert [(r["project_id"], r["user_id"], r["batch"], r["service_tier"], r["num_model_requests"]) for r in odd] == [
        (None, None, False, "default", 4)
    ]
    batch_only = completions(alice, start_time=unix(D0), end_time=unix(at(3)), batch="true")
    assert [bucket["results"] for bucket in batch_only["data"]] == [[], [], []]
    not_batch = completions(alice, start_time=unix(D0), end_time=unix(at(3)), batch="false")
    assert [sum(r["num_model_requests"] for r in bk["results"]) for bk in not_batch["data"]] == [4, 1, 1]
    future = completions(alice, start_time=unix(timezone.now()) + 86400 * 3)
    assert future["data"] == [] and future["has_more"] is False


@pytest.mark.django_db
def test_costs_are_shaped_like_openais_and_exact(alice, usage):
    response = costs(alice, start_time=unix(D0), end_time=unix(at(3)))
    assert response.status_code == 200, response.content
    page = response.json()
    assert set(page) == set(OPENAI_COSTS_PAGE)
    for bucket in page["data"]:
        assert set(bucket) == set(OPENAI_COSTS_PAGE["data"][0])
        for result in bucket["results"]:
            assert_shaped_like(result, OPENAI_COSTS_PAGE["data"][0]["results"][0], DataResultOrganizationCostsResult)
            assert_shaped_like(result, OPENAI_COSTS_RESULT, DataResultOrganizationCostsResult)
    assert [bucket["results"] for bucket in page["data"]] == [
        [{"object": "organization.costs.result", "amount": {"value": 0.00425, "currency": "usd"},
          "line_item": None, "project_id": None, "api_key_id": None}],
        [{"object": "organization.costs.result", "amount": {"value": 2e-08, "currency": "usd"},
          "line_item": None, "project_id": None, "api_key_id": None}],
        [{"object": "organization.costs.result", "amount": {"value": 0.08, "currency": "usd"},
          "line_item": None, "project_id": None, "api_key_id": None}],
    ]  # fmt: skip
    # the numbers are written exactly (no float on the way): 2e-08 as 0.00000002
    values = re.findall(rb'"value":([^,}]+)', response.content)
    assert values == [b"0.00425", b"0.00000002", b"0.08"]
    UsageCostsResponse.model_validate(page)
    by_key = costs(alice, start_time=unix(D0), end_time=unix(at(1)), group_by="api_key_id").json()
    assert {(r["api_key_id"], r["amount"]["value"]) for r in by_key["data"][0]["results"]} == {
        (str(usage["key_a"].pk), 0.00425), (str(usage["key_b"].pk), 0)
    }  # fmt: skip
    only_gpt5 = costs(alice, start_time=unix(D0), end_time=unix(at(1)), line_items="gpt-5").json()
    assert [r["amount"]["value"] for r in only_gpt5["data"][0]["results"]] == [0.00225]
    assert len(costs(alice, start_time=unix(D0) - 400 * 86400).json()["data"]) == 7
    assert len(costs(alice, start_time=unix(D0) - 400 * 86400, limit=180).json()["data"]) == 180


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/organization/usage/completions", {}, "start_time"),
        ("/organization/usage/completions", {"start_time": "yesterday"}, "start_time"),
        ("/organization/usage/completions", {"start_time": 1000, "end_time": 1000}, "end_time"),
        ("/organization/usage/completions", {"start_time": 10**15}, "start_time"),
        ("/organization/usage/completions", {"start_time": 0, "end_time": 10**15}, "end_time"),
        ("/organization/usage/completions", {"start_time": 0, "bucket_width": "1w"}, "bucket_width"),
        ("/organization/usage/completions", {"start_time": 0, "limit": 32}, "limit"),
        ("/organization/usage/completions", {"start_time": 0, "bucket_width": "1h", "limit": 169}, "limit"),
        ("/organization/usage/completions", {"start_time": 0, "bucket_width": "1m", "limit": 1441}, "limit"),
        ("/organization/usage/completions", {"start_time": 0, "limit": 0}, "limit"),
        ("/organization/usage/completions", {"start_time": 0, "group_by": "region"}, "group_by"),
        ("/organization/usage/completions", {"start_time": 0, "project_ids": "proj_abc"}, "project_ids"),
        ("/organization/usage/completions", {"start_time": 0, "user_ids[]": "user-abc"}, "user_ids"),
        ("/organization/usage/completions", {"start_time": 0, "api_key_ids": "key_abc"}, "api_key_ids"),
        ("/organization/usage/completions", {"start_time": 0, "batch": "yes"}, "batch"),
        ("/organization/usage/completions", {"start_time": 0, "page": "page_garbage"}, "page"),
        ("/organization/usage/completions", {"start_time": 0, "bucket": "1d"}, "bucket"),
        ("/organization/costs", {"start_time": 0, "bucket_width": "1h"}, "bucket_width"),
        ("/organization/costs", {"start_time": 0, "limit": 181}, "limit"),
        ("/organization/costs", {"start_time": 0, "group_by": "model"}, "group_by"),
        ("/organization/costs", {"start_time": 0, "project_ids[]": "proj_abc"}, "project_ids"),
        ("/organization/costs", {"start_time": 0, "models": "gpt-5"}, "models"),
    ],
)
def test_bad_openai_parameters_are_400s_naming_them(alice, path, params, field):
    assert_error(alice.client.get(alice.url(path), params), 400, "invalid_request", {field})


@pytest.mark.django_db
def test_a_page_cursor_of_another_query_is_refused(alice, usage):
    first = completions(alice, start_time=unix(D0), end_time=unix(at(3)), limit=1)
    # hourly buckets do not start where a daily page would; and a cursor before start_time
    page = first["next_page"]
    assert_error(
        alice.client.get(alice.url("/organization/usage/completions"), {"start_time": unix(at(1, 1)), "page": page,
                         "bucket_width": "1h"}), 400, "invalid_request", {"page"},
    )  # fmt: skip
    assert_error(
        alice.client.get(alice.url("/organization/usage/completions"), {"start_time": unix(at(2)), "page": page}),
        400, "invalid_request", {"page"},
    )  # fmt: skip


@pytest.mark.django_db
def test_openai_shaped_answers_are_few_queries_and_never_another_accounts(
    alice, bob, usage, django_assert_max_num_queries
):
    window = {"start_time": unix(D0), "end_time": unix(at(3))}
    completions(alice, **window)
    rollup.usage_rollup(now=at(2))  # the first two days from the roll-up, the third from the rows
    with django_assert_max_num_queries(5):  # token, membership, watermark, roll-up, rows
        completions(alice, **window, group_by="api_key_id")
    with django_assert_max_num_queries(5):
        costs(alice, **window, group_by="api_key_id")
    theirs = str(usage["theirs"].pk)
    mine = completions(alice, **window, api_key_ids=theirs)
    assert all(bucket["results"] == [] for bucket in mine["data"])
    bobs = completions(bob, **window)["data"][0]["results"]
    assert [(r["input_tokens"], r["num_model_requests"]) for r in bobs] == [(99_999, 1)]
