"""The metrics a request produces (issue 15, Deliver 2), scraped from the live gateway's /metrics
as Prometheus would; the ledger's gauges; the tally that keeps them off the request path."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from django.utils import timezone
from prometheus_client import CollectorRegistry, Histogram

from billing import services
from billing.models import Hold, Route
from openbili.ops import metrics
from tests.ops.support import TOKEN, delta, scrape, total, value

CHAT = "/v1/chat/completions"


@pytest.fixture
def site(gateway, settings):
    settings.OPENBILI_METRICS_TOKEN = TOKEN
    return gateway


def chat(site, **kwargs):
    return site.openai().chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Count the metrics"}], **kwargs
    )


def test_a_successful_request_shows_in_every_request_metric(site):
    route = Route.objects.get(model__name="gpt-5")
    before = scrape(site)
    started = time.monotonic()
    chat(site)
    elapsed = time.monotonic() - started
    after = scrape(site)
    labels = {"endpoint": CHAT, "model": "gpt-5", "status": 200, "error_class": ""}
    assert delta(before, after, "openbili_requests_total", **labels) == 1
    assert delta(before, after, "openbili_gateway_added_seconds_count", endpoint=CHAT) == 1
    added = delta(before, after, "openbili_gateway_added_seconds_sum", endpoint=CHAT)
    upstream = delta(before, after, "openbili_upstream_seconds_sum", endpoint=CHAT, provider="openai")
    assert delta(before, after, "openbili_upstream_seconds_count", endpoint=CHAT, provider="openai") == 1
    # The two parts of the request's time: neither is zero, together they are within what the client saw.
    assert added > 0 and upstream > 0 and added + upstream <= elapsed
    assert delta(before, after, "openbili_time_to_first_byte_seconds_count", endpoint=CHAT, stream="false") == 1
    # A bucket holds every observation at or below its bound: the request is in +Inf and, for
    # the added time, in some bucket well below a second.
    assert delta(before, after, "openbili_gateway_added_seconds_bucket", endpoint=CHAT, le="+Inf") == 1
    assert delta(before, after, "openbili_gateway_added_seconds_bucket", endpoint=CHAT, le="1.0") == 1
    attempt = {"route": route.pk, "provider": "openai", "outcome": "ok"}
    assert delta(before, after, "openbili_upstream_attempts_total", **attempt) == 1
    assert delta(before, after, "openbili_upstream_retries_total", route=route.pk, provider="openai") == 0


def test_a_stream_has_its_time_to_first_byte(site):
    site.upstream.configure(chunks=6, chunk_delay_ms=30)
    before = scrape(site)
    started = time.monotonic()
    chunks = list(chat(site, stream=True))
    elapsed = time.monotonic() - started
    assert chunks
    after = scrape(site)
    assert delta(before, after, "openbili_time_to_first_byte_seconds_count", endpoint=CHAT, stream="true") == 1
    first_byte = delta(before, after, "openbili_time_to_first_byte_seconds_sum", endpoint=CHAT, stream="true")
    # The first chunk came well before the last (six chunks 30 ms apart).
    assert 0 < first_byte < elapsed - 0.1
    # The relay's time is the upstream's: the gateway's own stays small however long the stream.
    added = delta(before, after, "openbili_gateway_added_seconds_sum", endpoint=CHAT)
    assert added < elapsed / 2


def test_a_retried_attempt_counts_as_an_upstream_error_and_a_retry(site):
    route = Route.objects.get(model__name="gpt-5")
    site.upstream.script(status=500)
    before = scrape(site)
    chat(site)
    after = scrape(site)
    failed = total(after, "openbili_upstream_attempts_total", route=route.pk) - total(
        before, "openbili_upstream_attempts_total", route=route.pk
    )
    assert failed == 2  # the 500, then the retry's success
    assert (
        delta(before, after, "openbili_upstream_attempts_total", route=route.pk, provider="openai", outcome="ok") == 1
    )
    assert delta(before, after, "openbili_upstream_retries_total", route=route.pk, provider="openai") == 1
    ok = {"endpoint": CHAT, "model": "gpt-5", "status": 200, "error_class": ""}
    assert delta(before, after, "openbili_requests_total", **ok) == 1


def test_refusals_are_counted_with_their_error_class_and_made_up_models_under_unknown(site):
    before = scrape(site)
    with pytest.raises(openai.AuthenticationError):
        chat(site.__class__(site.server, site.upstream, site.account, "sk-not-a-key"))
    with pytest.raises(openai.NotFoundError):
        site.openai().chat.completions.create(model="gpt-made-up-9", messages=[{"role": "user", "content": "x"}])
    after = scrape(site)
    no_key = {"endpoint": CHAT, "model": "unknown", "status": 401, "error_class": "auth_or_key_scope"}
    assert delta(before, after, "openbili_requests_total", **no_key) == 1
    made_up = {"endpoint": CHAT, "model": "unknown", "status": 404, "error_class": "model_unavailable"}
    assert delta(before, after, "openbili_requests_total", **made_up) == 1
    assert not [series for (name, series) in after if ("model", "gpt-made-up-9") in series]


def test_unknown_urls_are_one_series_whatever_the_path(site):
    before = scrape(site)
    for path in ("/v1/nothing-here", "/v1/also/not/here"):
        assert site.get(path).status_code == 404
    after = scrape(site)
    labels = {"endpoint": "other", "model": "unknown", "status": 404, "error_class": "invalid_request"}
    assert delta(before, after, "openbili_requests_total", **labels) == 2
    assert not [series for (name, series) in after if ("endpoint", "/v1/nothing-here") in series]


def test_rate_limit_decisions(site):
    from billing.models import ApiKey

    services.key_update(key=ApiKey.objects.get(account=site.account), rpm_limit=1)
    site.refresh()
    before = scrape(site)
    chat(site)
    with pytest.raises(openai.RateLimitError):
        chat(site)
    after = scrape(site)
    assert delta(before, after, "openbili_rate_limit_decisions_total", decision="admitted") == 1
    assert delta(before, after, "openbili_rate_limit_decisions_total", decision="refused") == 1
    limited = {"endpoint": CHAT, "model": "gpt-5", "status": 429, "error_class": "quota_or_rate_limit"}
    assert delta(before, after, "openbili_requests_total", **limited) == 1


def test_the_ledgers_state_is_read_when_scraped(site, settings):
    route = Route.objects.get(model__name="gpt-5")
    now = timezone.now()
    # An open hold an hour old, past its expiry: what the sweeper should have released.
    hold = Hold.objects.create(
        account=site.account,
        request_id="req_metrics_hold",
        amount=Decimal("0.50"),
        expires_at=now - timedelta(minutes=5),
    )
    Hold.objects.filter(pk=hold.pk).update(created_at=now - timedelta(hours=1))
    services.probe_record(route=route, ok=False, status_code=401, error="bad key")
    metrics.record_reconcile(3)
    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete("openbili-outbox", "openbili-outbox-dead")
        client.rpush("openbili-outbox", "{}", "{}")
    try:
        samples = scrape(site)
    finally:
        if settings.REDIS_URL:
            client.delete("openbili-outbox")
            client.close()
    assert value(samples, "openbili_ledger_scrape_ok") == 1
    assert value(samples, "openbili_holds_open") == 1
    assert value(samples, "openbili_holds_open_usd") == 0.5
    assert value(samples, "openbili_holds_overdue") == 1
    assert 3590 < value(samples, "openbili_hold_oldest_age_seconds") < 3700
    assert value(samples, "openbili_route_probe_ok", route=route.pk, model="gpt-5", provider="openai") == 0
    assert value(samples, "openbili_route_probe_age_seconds", route=route.pk) < 60
    assert value(samples, "openbili_reconcile_differences") == 3
    assert abs(value(samples, "openbili_reconcile_last_run_timestamp_seconds") - time.time()) < 60
    if settings.REDIS_URL:
        assert value(samples, "openbili_outbox_pending") == 2
        assert value(samples, "openbili_outbox_dead") == 0


def test_probes_and_tasks_are_counted(site):
    from usage import tasks

    route = Route.objects.get(model__name="gpt-5")
    before = scrape(site)
    services.probe_record(route=route, ok=True, status_code=200, latency_ms=12)
    tasks.exports_expire.apply()  # eager, in this process: the signals time it as a worker would
    after = scrape(site)
    assert delta(before, after, "openbili_probes_total", route=route.pk, provider="openai", outcome="ok") == 1
    task = {"task": "usage.tasks.exports_expire", "outcome": "success"}
    assert delta(before, after, "openbili_task_seconds_count", **task) == 1


def test_a_failing_task_is_counted_as_a_failure(site):
    from billing import tasks

    before = scrape(site)
    result = tasks.invoice_build.apply(args=(987654321, "2026-11"))  # no such account: the run raises
    assert result.failed()
    after = scrape(site)
    assert delta(before, after, "openbili_task_failures_total", task="billing.tasks.invoice_build") == 1
    assert (
        delta(before, after, "openbili_task_seconds_count", task="billing.tasks.invoice_build", outcome="failure") == 1
    )


def test_metrics_scrape_lists_no_secret(site):
    samples = httpx.get(site.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20).text
    route = Route.objects.get(model__name="gpt-5")
    assert site.secret not in samples
    assert services.route_secret(route) not in samples
    assert site.upstream.url not in samples  # an upstream's URL is configuration, not a label


# --- the tally ---------------------------------------------------------------------------------


def test_the_tally_buckets_observations_exactly_as_prometheus_client_does():
    """Tally.flush writes buckets and sum through prometheus-client's own values (a private but
    long-stable layout): the same observations, made directly or through the tally, must expose
    the same samples — boundary values included."""
    buckets = (0.001, 0.01, 0.1, 1.0)
    observations = [0.0, 0.0005, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 99.0]
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("t", "direct", ["a"], buckets=buckets, registry=direct_registry)
    tallied = Histogram("t", "tallied", ["a"], buckets=buckets, registry=tallied_registry)
    metrics.BOUNDS[tallied] = (*tallied._upper_bounds,)
    tally = metrics.Tally()
    for observation in observations:
        direct.labels("x").observe(observation)
        tally.observe(tallied, ("x",), observation)
    tally.flush()

    def samples(registry):
        return [
            (s.name, s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if "created" not in s.name
        ]

    assert samples(direct_registry) == samples(tallied_registry)
    assert tally.counts == {} and tally.observed == {}  # a flush starts the next second empty
