"""The sweeper releases holds whose request died; probes decide what /v1/models shows (CONTRACT §3, §4)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from billing import services
from billing.models import Account, Hold, LedgerEntry, Probe, Route
from tests.factories import CatalogModelFactory, make_visible_model
from tests.gateway.support import MSG, assert_ledger, assert_sdk_error, cost_of
from tests.gateway_fixtures import CLAUDE
from usage import services as usage_services
from usage.models import UsageRecord


def dead_request(gateway, request_id: str, *, amount: Decimal = Decimal("2"), expired: bool = True) -> UsageRecord:
    """What a request leaves behind when its gateway process dies: an open hold and a pending row."""
    hold_id = services.hold_reserve(
        account_id=gateway.account.pk, request_id=request_id, amount=amount, api_key_id=None, ttl_seconds=600
    )
    row = UsageRecord.objects.create(
        request_id=request_id,
        trace_id="trace_" + "a" * 32,
        account=gateway.account,
        endpoint="/v1/chat/completions",
        model_requested="gpt-5",
        stream=True,
        billing_result="pending",
        hold_id=hold_id,
        started_at=timezone.now() - timedelta(hours=1),
    )
    if expired:
        Hold.objects.filter(pk=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    return row


def test_sweeper_releases_the_hold_of_a_dead_request(gateway):
    # given a request that died with $2 reserved
    row = dead_request(gateway, "req_dead")
    account = Account.objects.get(pk=gateway.account.pk)
    assert (account.balance, account.reserved) == (Decimal("100"), Decimal("2"))
    # when the sweeper runs
    assert usage_services.requests_sweep() == 1
    # then the hold is released, the row finished as interrupted, the balance untouched
    row.refresh_from_db()
    assert (row.billing_result, row.cost_usd, row.status) == ("not_billed", 0, 500)
    assert (row.error_class, row.error_code) == ("upstream_or_platform_error", "interrupted")
    assert row.finished_at is not None
    hold = Hold.objects.get(pk=row.hold_id)
    assert (hold.state, hold.settled_amount) == ("released", 0)
    assert_ledger(gateway.account.pk, spent=Decimal(0))
    assert not LedgerEntry.objects.filter(kind="usage").exists()
    # and running it again changes nothing
    assert usage_services.requests_sweep() == 0
    again = UsageRecord.objects.get(pk=row.pk)
    assert (again.billing_result, again.finished_at, again.error_code) == ("not_billed", row.finished_at, "interrupted")
    assert_ledger(gateway.account.pk, spent=Decimal(0))


def test_sweeper_leaves_live_requests_alone(gateway):
    # given one dead request and one still within its hold's lifetime
    dead_request(gateway, "req_dead")
    live = dead_request(gateway, "req_live", amount=Decimal("3"), expired=False)
    assert usage_services.requests_sweep() == 1
    live.refresh_from_db()
    assert live.billing_result == "pending"
    assert Hold.objects.get(pk=live.hold_id).state == "open"
    assert Account.objects.get(pk=gateway.account.pk).reserved == Decimal("3")
    # the live request then settles normally
    services.hold_settle(hold_id=live.hold_id, cost=Decimal("0.5"))
    assert_ledger(gateway.account.pk, spent=Decimal("0.5"))


def test_a_request_that_settled_is_not_swept(gateway):
    # given a real request, and then its (resolved) hold backdated past its expiry
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    row = gateway.row(raw.headers["x-request-id"])
    Hold.objects.filter(pk=row.hold_id).update(expires_at=timezone.now() - timedelta(hours=1))
    assert usage_services.requests_sweep() == 0
    row.refresh_from_db()
    cost = cost_of(input_tokens=10, output_tokens=8)
    assert (row.billing_result, row.cost_usd) == ("billed", cost)
    assert_ledger(gateway.account.pk, spent=cost)


def test_gateway_holds_expire_after_the_slowest_legitimate_request(gateway):
    # the hold's lifetime covers the route timeout twice (a retry) plus a minute
    Route.objects.filter(model__name="gpt-5").update(timeout_seconds=30)
    gateway.refresh()
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    hold = Hold.objects.get(request_id=raw.headers["x-request-id"])
    assert timedelta(seconds=119) <= hold.expires_at - hold.created_at <= timedelta(seconds=121)


def test_probe_records_ok_and_a_failed_probe_hides_the_model(gateway):
    make_visible_model(CatalogModelFactory(name="gpt-4.1"), base_url=gateway.upstream.url + "/v1")
    gateway.refresh()
    # when the probes run against a healthy upstream
    results = usage_services.routes_probe()
    assert sorted((route.model.name, ok) for route, ok in results) == [("gpt-4.1", True), ("gpt-5", True)]
    probe = Probe.objects.filter(route__model__name="gpt-5").order_by("-checked_at", "-id").first()
    assert (probe.ok, probe.status_code, probe.error) == (True, 200, "")
    probe_request = gateway.upstream.requests[-1]
    assert probe_request["json"]["max_tokens"] == 1
    assert probe_request["headers"]["authorization"] == "Bearer upstream-test-secret"
    # when gpt-5's upstream fails its probe
    gateway.upstream.reset()
    gateway.upstream.script(status=500, path="chat/completions", model="gpt-5")
    results = dict((route.model.name, ok) for route, ok in usage_services.routes_probe())
    assert results == {"gpt-4.1": True, "gpt-5": False}
    probe = Probe.objects.filter(route__model__name="gpt-5").order_by("-checked_at", "-id").first()
    assert (probe.ok, probe.status_code, probe.error) == (False, 500, "HTTP 500")
    gateway.refresh()
    # then it disappears from /v1/models, and calls get 404 model_not_ready
    client = gateway.openai()
    assert [model.id for model in client.models.list().data] == ["gpt-4.1"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-5", messages=MSG)
    assert_sdk_error(caught.value, status=404, code="model_not_ready", param="model")
    # and comes back with the next good probe
    usage_services.routes_probe(model="gpt-5")
    gateway.refresh()
    assert sorted(model.id for model in client.models.list().data) == ["gpt-4.1", "gpt-5"]


def test_a_claude_route_is_probed_for_free_and_a_failing_one_hides_its_model(claude):
    # when the probes run: Anthropic's Models API, no message generated (issue 10, Deliver 5)
    claude.upstream.reset()
    [(_, ok)] = usage_services.routes_probe(model=CLAUDE)
    assert ok is True
    [probe_request] = claude.upstream.requests
    assert (probe_request["method"], probe_request["path"]) == ("GET", "/v1/models/claude-up")
    assert probe_request["headers"]["x-api-key"] == "upstream-test-secret"
    # when the route's key is refused (401), the model is hidden
    claude.upstream.script(status=401, path="/v1/models/claude-up")
    [(_, ok)] = usage_services.routes_probe(model=CLAUDE)
    assert ok is False
    claude.refresh()
    assert CLAUDE not in [model.id for model in claude.openai().models.list().data]


def test_probe_of_an_unreachable_upstream_fails_without_secrets(gateway):
    Route.objects.filter(model__name="gpt-5").update(base_url="http://127.0.0.1:9/v1")
    [(route, ok)] = usage_services.routes_probe(model="gpt-5")
    assert ok is False
    probe = Probe.objects.filter(route=route).order_by("-checked_at", "-id").first()
    assert probe.ok is False and probe.status_code is None
    assert "upstream-test-secret" not in probe.error
