"""The error contract of /v1 (CONTRACT §2.1): status, SDK exception class, body shape, ids and the usage row."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.utils import timezone

import usage.gateway.context
from billing import money, services
from billing.models import CatalogModel, Route
from tests.factories import AccountFactory, CatalogModelFactory, ProbeFactory, make_visible_model
from tests.gateway.support import (
    MSG,
    assert_error_body,
    assert_ids,
    assert_no_row,
    assert_outcome,
    assert_sdk_error,
    cost_of,
    rejected,
)
from usage.models import UsageRecord

CHAT = "/v1/chat/completions"
UNKNOWN_KEY = "sk-ob-" + "A" * 43


# --- 401: keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "headers"),
    [
        ("missing", {}),
        ("bearer without a key", {"Authorization": "Bearer"}),
        ("other scheme", {"Authorization": "Basic c2stb2ItYWJj"}),
        ("malformed", {"Authorization": "Bearer sk-not-ours"}),
        ("malformed x-api-key", {"x-api-key": "hello"}),
        ("unknown", {"Authorization": f"Bearer {UNKNOWN_KEY}"}),
        ("unknown x-api-key", {"x-api-key": UNKNOWN_KEY}),
    ],
)
def test_no_valid_key_is_401_without_a_usage_row(gateway, label, headers):
    response = gateway.post(CHAT, key=False, headers=headers, json={"model": "gpt-5", "messages": MSG})
    request_id = assert_error_body(response, status=401, code="invalid_api_key", type_="invalid_request_error")
    # no known key: answered and logged, but it belongs to no account
    assert_no_row(request_id)
    assert gateway.upstream.requests == []


@pytest.mark.parametrize("key", ["", "sk-ob-short", UNKNOWN_KEY])
def test_sdk_raises_authentication_error(gateway, key):
    client = gateway.openai(key or "placeholder")
    extra = {"Authorization": openai.omit} if not key else None
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-5", messages=MSG, extra_headers=extra)
    request_id = assert_sdk_error(caught.value, status=401, code="invalid_api_key")
    assert_no_row(request_id)


def test_disabled_key_is_401_with_a_not_billed_row(gateway):
    key, secret = services.key_create(account=gateway.account, name="to disable")
    assert gateway.openai(secret).models.list().data  # known and cached by the gateway
    services.key_disable(key=key)
    gateway.refresh()
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.openai(secret).chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=401, code="invalid_api_key")
    row = rejected(gateway, request_id, 401, "auth_or_key_scope", "invalid_api_key")
    assert (row.api_key_id, row.key_prefix) == (key.pk, key.prefix)
    assert gateway.upstream.requests == []


def test_expired_key_is_401_with_a_not_billed_row(gateway):
    key, secret = services.key_create(
        account=gateway.account, name="expired", expires_at=timezone.now() - timedelta(minutes=1)
    )
    response = gateway.post(CHAT, key=secret, json={"model": "gpt-5", "messages": MSG})
    request_id = assert_error_body(response, status=401, code="invalid_api_key")
    row = rejected(gateway, request_id, 401, "auth_or_key_scope", "invalid_api_key")
    assert row.api_key_id == key.pk
    assert gateway.upstream.requests == []


def test_x_api_key_header_is_accepted(gateway):
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    response = gateway.post(
        CHAT, key=False, headers={"x-api-key": gateway.secret}, json={"model": "gpt-5", "messages": MSG}
    )
    assert response.status_code == 200
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )


# --- 403 / 404: scope and catalog ----------------------------------------------------------------


def test_model_outside_the_key_scope_is_403(gateway):
    make_visible_model(CatalogModelFactory(name="gpt-4.1"), base_url=gateway.upstream.url + "/v1")
    gateway.refresh()
    _, secret = services.key_create(account=gateway.account, name="scoped", models=["gpt-4.1"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gateway.openai(secret).chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=403, code="model_not_allowed", param="model")
    row = rejected(gateway, request_id, 403, "auth_or_key_scope", "model_not_allowed")
    assert row.model_requested == "gpt-5"
    assert gateway.upstream.requests == []


def test_unknown_model_is_404_model_not_found(gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.openai().chat.completions.create(model="gpt-9-ultra", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=404, code="model_not_found", param="model")
    row = rejected(gateway, request_id, 404, "model_unavailable", "model_not_found")
    assert row.model_requested == "gpt-9-ultra"
    assert gateway.upstream.requests == []


@pytest.mark.parametrize("reason", ["probe failed", "disabled", "no price", "route inactive"])
def test_hidden_model_is_404_model_not_ready(gateway, reason):
    model = CatalogModel.objects.get(name="gpt-5")
    route = Route.objects.get(model=model)
    if reason == "probe failed":
        ProbeFactory(route=route, ok=False)
    elif reason == "disabled":
        CatalogModel.objects.filter(pk=model.pk).update(enabled=False)
    elif reason == "route inactive":
        Route.objects.filter(pk=route.pk).update(active=False)
    else:
        hidden = CatalogModelFactory(name="gpt-5-unpriced")
        ProbeFactory(route=Route.objects.create(model=hidden, name="r", provider="openai", base_url=route.base_url))
        model = hidden
    gateway.refresh()
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.openai().chat.completions.create(model=model.name, messages=MSG)
    request_id = assert_sdk_error(caught.value, status=404, code="model_not_ready", param="model")
    rejected(gateway, request_id, 404, "model_unavailable", "model_not_ready")
    assert gateway.upstream.requests == []


# --- 400 / 413: bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"[]", b"null", b'"gpt-5"', b"\xff\xfe{}", b"[" * 100_000, b'{"a":' * 100_000]
)
def test_malformed_json_is_400_invalid_json(gateway, body):
    response = gateway.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    request_id = assert_error_body(response, status=400, code="invalid_json", type_="invalid_request_error")
    rejected(gateway, request_id, 400, "invalid_request", "invalid_json")
    assert gateway.upstream.requests == []


def test_sdk_raises_bad_request_for_malformed_json(gateway):
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai().post(
            "/chat/completions",
            cast_to=object,
            content=b'{"model": "gpt-5", "messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )
    request_id = assert_sdk_error(caught.value, status=400, code="invalid_json")
    rejected(gateway, request_id, 400, "invalid_request", "invalid_json")


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"messages": "Hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
        ({"model": ""}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream_options": "include_usage"}, "stream_options"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": 10.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": "2"}, "n"),
        ({"n": 129}, "n"),
    ],
)
def test_wrong_types_are_400_with_the_param(gateway, override, param):
    # sent through the SDK: extra_body replaces the typed parameters on the wire
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG, extra_body=override)
    request_id = assert_sdk_error(caught.value, status=400, code="invalid_request", param=param)
    rejected(gateway, request_id, 400, "invalid_request", "invalid_request")
    assert gateway.upstream.requests == []


def test_body_over_the_limit_is_413(gateway, monkeypatch):
    monkeypatch.setattr(usage.gateway.context, "MAX_BODY_BYTES", 1000)
    big = [{"role": "user", "content": "word " * 400}]
    # declared by Content-Length (the SDK)
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=big)
    assert type(caught.value) is openai.APIStatusError
    request_id = assert_sdk_error(caught.value, status=413, code="request_too_large")
    rejected(gateway, request_id, 413, "invalid_request", "request_too_large")
    # and sent chunked, with no Content-Length
    payload = json.dumps({"model": "gpt-5", "messages": big}).encode()
    response = httpx.post(
        gateway.url + CHAT,
        content=iter([payload[:600], payload[600:]]),
        headers={"Authorization": f"Bearer {gateway.secret}", "Content-Type": "application/json"},
        timeout=20,
    )
    assert "content-length" not in response.request.headers
    request_id_2 = assert_error_body(response, status=413, code="request_too_large")
    rejected(gateway, request_id_2, 413, "invalid_request", "request_too_large")
    assert gateway.upstream.requests == []
    # a body within the limit still goes through
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-5", "messages": MSG, "max_tokens": 10**30},
        {"model": "gpt-5", "messages": MSG, "max_completion_tokens": 2**31},
        {"model": "gpt-5\u0000", "messages": MSG},
        {"model": "x" * 10_000, "messages": MSG},
        {"model": "gpt-5", "messages": MSG, "stream_options": {"include_usage": "yes"}},
        {"model": "gpt-5", "messages": [1, None, "x"]},
        {"model": "gpt-5", "messages": MSG, "temperature": "hot", "tools": "none"},
        {"model": ["gpt-5"], "messages": MSG},
        {"model": "gpt-5", "messages": MSG, "n": 10**20},
        {"model": "gpt-5", "messages": MSG, "max_tokens": float("inf")},
    ],
)
def test_no_bad_input_is_a_500(gateway, body):
    response = gateway.post(CHAT, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    request_id, _ = assert_ids(response.headers)
    # one finished row, whatever the outcome, and the ledger consistent
    row = gateway.row(request_id)
    assert UsageRecord.objects.filter(request_id=request_id).count() == 1
    assert row.status == response.status_code
    if response.status_code != 200:
        assert_error_body(
            response, status=response.status_code, code=row.error_code, param=response.json()["error"]["param"]
        )
    spent = row.cost_usd
    assert_outcome(
        gateway,
        request_id,
        billing_result=row.billing_result,
        status=row.status,
        cost=spent,
        error_class=row.error_class,
        error_code=row.error_code,
    )


def test_huge_max_tokens_is_clamped_and_recorded(gateway):
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG, "max_tokens": 10**30})
    assert response.status_code == 200
    assert gateway.upstream.requests[-1]["json"]["max_tokens"] == 128_000
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    # the column holds a 32-bit integer: the request is recorded as the largest value it can hold
    assert (row.max_tokens_requested, row.max_tokens_applied) == (2**31 - 1, 128_000)


# --- 402 --------------------------------------------------------------------------------------------


def test_insufficient_balance_is_402_and_upstream_is_never_called(gateway):
    # given an account with $1: the request's maximum cost (128,000 output tokens at $10/M) is $1.28+
    poor = AccountFactory(credit=Decimal("1"))
    _, secret = services.key_create(account=poor, name="poor")
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.openai(secret).chat.completions.create(model="gpt-5", messages=MSG)
    assert type(caught.value) is openai.APIStatusError
    request_id = assert_sdk_error(caught.value, status=402, code="insufficient_balance")
    row = rejected(
        gateway,
        request_id,
        402,
        "quota_or_rate_limit",
        "insufficient_balance",
        account_id=poor.pk,
        credit=Decimal("1"),
    )
    assert row.hold_id is None
    assert gateway.upstream.requests == []
    # a small enough max_tokens fits the balance
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    raw = gateway.openai(secret).chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, max_tokens=1000)
    request_id, _ = assert_ids(raw.headers)
    cost = cost_of(input_tokens=10, output_tokens=8)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost, account_id=poor.pk, credit=Decimal("1")
    )


# --- upstream failures ----------------------------------------------------------------------------


def test_upstream_429_is_passed_on_with_retry_after(gateway):
    gateway.upstream.script(status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=429, code="upstream_rate_limited")
    headers = caught.value.response.headers
    assert headers["retry-after"] == "7"
    for name in ("requests", "tokens"):
        for part in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{part}-{name}" in headers
    row = rejected(gateway, request_id, 429, "quota_or_rate_limit", "upstream_rate_limited")
    assert [(a["status"], a["error"]) for a in row.attempts] == [(429, "upstream_rate_limited")]
    assert len(gateway.upstream.requests) == 1  # a 429 is not retried


def test_upstream_429_with_fractional_retry_after_is_rounded_up(gateway):
    gateway.upstream.script(status=429, retry_after="2.1")
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG})
    assert_error_body(response, status=429, code="upstream_rate_limited", type_="rate_limit_error")
    assert response.headers["retry-after"] == "3"


def test_upstream_500_twice_is_502_after_one_retry(gateway):
    gateway.upstream.script(status=500, times=2)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=502, code="upstream_error")
    row = rejected(gateway, request_id, 502, "upstream_or_platform_error", "upstream_error")
    assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == [
        (1, 500, "upstream_error"),
        (2, 500, "upstream_error"),
    ]
    assert len(gateway.upstream.requests) == 2


def test_upstream_503_then_success_is_retried_and_billed(gateway):
    gateway.upstream.script(status=503)
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    assert raw.parse().choices[0].message.content
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    attempts = [(a["attempt"], a["status"], a["error"]) for a in row.attempts]
    assert attempts == [(1, 503, "upstream_unavailable"), (2, 200, "")]
    assert len(gateway.upstream.requests) == 2


def test_upstream_hang_is_504_after_one_retry(gateway):
    Route.objects.filter(model__name="gpt-5").update(timeout_seconds=1)
    gateway.refresh()
    gateway.upstream.script(hang=True, times=2)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=504, code="upstream_timeout")
    row = rejected(gateway, request_id, 504, "upstream_or_platform_error", "upstream_timeout")
    assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == [
        (1, None, "upstream_timeout"),
        (2, None, "upstream_timeout"),
    ]
    assert all(900 <= a["ms"] < 3000 for a in row.attempts)


def test_slow_first_byte_times_out_then_the_retry_succeeds(gateway):
    Route.objects.filter(model__name="gpt-5").update(timeout_seconds=1)
    gateway.refresh()
    gateway.upstream.script(delay_first_byte_ms=1500)
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG, "stream": True})
    assert response.status_code == 200
    assert response.text.rstrip().endswith("data: [DONE]")
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == [
        (1, None, "upstream_timeout"),
        (2, 200, ""),
    ]


def test_upstream_down_is_503(gateway):
    Route.objects.filter(model__name="gpt-5").update(base_url="http://127.0.0.1:9/v1")
    gateway.refresh()
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=503, code="upstream_unavailable")
    row = rejected(gateway, request_id, 503, "upstream_or_platform_error", "upstream_unavailable")
    assert len(row.attempts) == 2


def test_upstream_error_with_usage_is_failed_but_billable(gateway):
    # given an upstream that refuses the request after reading 1000 prompt tokens, and says so
    gateway.upstream.script(
        status=400,
        message="context too long after tool expansion",
        usage={"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000},
    )
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=400, code="invalid_request")
    assert "context too long" in caught.value.message
    cost = Decimal(1000) * Decimal("1.25") / 10**6
    assert (
        cost
        == Decimal("0.00125")
        == money.usage_cost(money.Prices(input_per_mtok=Decimal("1.25")), money.TokenUsage(input_tokens=1000))
    )
    row = assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=400,
        cost=cost,
        error_class="invalid_request",
        error_code="invalid_request",
    )
    assert (row.input_tokens, row.output_tokens) == (1000, 0)


# --- ids, routing, methods -------------------------------------------------------------------------


def test_traceparent_is_honoured(gateway):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    client = gateway.openai(default_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    request_id, trace_id = assert_ids(raw.headers)
    assert trace_id == "trace_" + trace
    assert gateway.row(request_id).trace_id == trace_id
    # errors carry it too
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=MSG)
    assert caught.value.response.headers["x-trace-id"] == caught.value.body["trace_id"] == "trace_" + trace


@pytest.mark.parametrize("traceparent", ["garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-xyz-00-01"])
def test_invalid_traceparent_starts_a_new_trace(gateway, traceparent):
    response = gateway.post(CHAT, headers={"traceparent": traceparent}, json={"model": "gpt-5", "messages": MSG})
    assert response.status_code == 200
    _, trace_id = assert_ids(response.headers)
    assert len(trace_id) == len("trace_") + 32 and trace_id != "trace_" + "0" * 32


def test_request_ids_are_unique(gateway):
    ids = {assert_ids(gateway.get("/v1/models").headers)[0] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat", "/v1", "/v1/embeddings"])
def test_unknown_v1_path_is_a_404_json_error(gateway, path):
    response = gateway.post(path, json={"model": "gpt-5"})
    request_id = assert_error_body(response, status=404, code="unknown_url")
    rejected(gateway, request_id, 404, "invalid_request", "unknown_url")  # a known key: its one row
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.openai().post(path.removeprefix("/v1"), cast_to=object, body={"model": "gpt-5"})
    assert_sdk_error(caught.value, status=404, code="unknown_url")


def test_a_long_unknown_url_is_not_echoed_whole(gateway):
    response = gateway.get("/v1/" + "x" * 20_000)
    assert_error_body(response, status=404, code="unknown_url")
    assert len(response.content) < 1_000  # the message names the URL's first 200 characters only


@pytest.mark.parametrize(
    ("method", "path"), [("GET", CHAT), ("PUT", CHAT), ("POST", "/v1/models"), ("DELETE", "/v1/models/gpt-5")]
)
def test_wrong_method_is_405(gateway, method, path):
    response = httpx.request(method, gateway.url + path, headers={"Authorization": f"Bearer {gateway.secret}"})
    assert_error_body(response, status=405, code="method_not_allowed")
    assert gateway.upstream.requests == []


def test_answer_cut_before_reaching_the_client_is_retried(gateway):
    # given an upstream that announces a whole JSON body, sends half of it and drops the connection
    gateway.upstream.script(cut_after_chunks=1)
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    # then nothing had reached the client yet: the gateway retries once, and the retry is billed
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    assert raw.parse().choices[0].message.content
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == [
        (1, 200, "upstream_timeout"),
        (2, 200, ""),
    ]


def test_answer_cut_twice_is_504(gateway):
    gateway.upstream.script(cut_after_chunks=1, times=2)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG)
    request_id = assert_sdk_error(caught.value, status=504, code="upstream_timeout")
    row = rejected(gateway, request_id, 504, "upstream_or_platform_error", "upstream_timeout")
    assert len(row.attempts) == 2


@pytest.mark.parametrize("status", [429, 500])
def test_stream_request_failing_before_the_stream_is_a_json_error(gateway, status):
    gateway.upstream.script(status=status, times=2 if status >= 500 else 1, retry_after=1)
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.openai().chat.completions.create(model="gpt-5", messages=MSG, stream=True)
    expected = {
        429: (openai.RateLimitError, 429, "upstream_rate_limited"),
        500: (openai.InternalServerError, 502, "upstream_error"),
    }
    exc_type, sent_status, code = expected[status]
    assert type(caught.value) is exc_type
    request_id = assert_sdk_error(caught.value, status=sent_status, code=code)
    row = gateway.row(request_id)
    assert row.stream is True
    rejected(gateway, request_id, sent_status, row.error_class, code)


def test_the_retry_goes_to_the_next_route(gateway):
    # given gpt-5 with two routes, the first one failing
    first = Route.objects.get(model__name="gpt-5")
    Route.objects.filter(pk=first.pk).update(upstream_model="gpt-5-primary", priority=1)
    second = Route.objects.create(
        model=first.model,
        name="secondary",
        provider="openai",
        base_url=first.base_url,
        upstream_model="gpt-5-secondary",
        priority=2,
    )
    services.route_secret_set(route=second, secret="second-secret")
    services.probe_record(route=second, ok=True, status_code=200)
    gateway.refresh()
    gateway.upstream.script(status=500, model="gpt-5-primary", times=0)
    gateway.upstream.script(model="gpt-5-secondary", tokens={"prompt": 10, "completion": 8})
    # when the customer calls
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    # then the second route answered, and both attempts are on the row's trace
    assert [r["json"]["model"] for r in gateway.upstream.requests] == ["gpt-5-primary", "gpt-5-secondary"]
    assert gateway.upstream.requests[-1]["headers"]["authorization"] == "Bearer second-secret"
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    assert (row.route_id, row.upstream_model) == (second.pk, "gpt-5-secondary")
    assert [(a["route_id"], a["upstream_model"], a["status"]) for a in row.attempts] == [
        (first.pk, "gpt-5-primary", 500),
        (second.pk, "gpt-5-secondary", 200),
    ]


def test_text_no_database_can_store_still_gets_its_row(gateway):
    # JSON may carry a lone surrogate ("\ud800"), which no UTF-8 database text can hold.
    body = b'{"model": "gpt-\\ud800x\\u0000", "messages": [{"role": "user", "content": "hi"}]}'
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    row = rejected(gateway, response.headers["x-request-id"], 404, "model_unavailable", "model_not_found")
    assert row.model_requested == "gpt-\ufffdx\ufffd"


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/messages"])
def test_absurdly_deep_json_is_refused_before_anything_is_held(claude, endpoint):
    # given content nested 971 lists deep: json.loads takes it, re-encoding it for the upstream
    # would recurse too deep (issue "hardening" #3: a 500 after the reserve, the credit held)
    content = "[" * 971 + "]" * 971
    body = f'{{"model": "gpt-5", "max_tokens": 10, "messages": [{{"role": "user", "content": {content}}}]}}'
    response = claude.post(endpoint, content=body.encode(), headers={"Content-Type": "application/json"})
    # then a 400 in the endpoint's format, one not_billed row, no hold taken, upstream never called
    assert response.status_code == 400, response.text
    request_id, _ = assert_ids(response.headers)
    row = rejected(claude, request_id, 400, "invalid_request", "invalid_json")
    assert row.hold_id is None
    assert "128 levels" in row.error_message
    assert claude.upstream.requests == []


def test_ordinary_nesting_is_untouched(gateway):
    schema: dict = {"type": "object"}
    for _ in range(30):  # a deep but real tool schema
        schema = {"type": "object", "properties": {"inner": schema}}
    tools = [{"type": "function", "function": {"name": "deep", "parameters": schema}}]
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG, "tools": tools})
    assert response.status_code == 200, response.text
    assert gateway.upstream.requests[-1]["json"]["tools"] == tools
