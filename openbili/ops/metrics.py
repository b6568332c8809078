"""Prometheus metrics (prometheus-client), in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set.

Three kinds, by how often they happen:

- The request path's (requests, the gateway's added latency, upstream time, time to first byte,
  upstream attempts and retries, rate-limit decisions) go through `TALLY`: plain dict arithmetic
  per request, written to prometheus-client's values once a second by the gateway's flusher
  (`Tally.flush`). A multiprocess value write takes a lock and an mmap store, about a microsecond;
  a request makes a dozen of them, which would be a few percent of its CPU. The tally costs a
  fraction of that, at the price of a scrape seeing at most a second-old figure.
- Rare events (writes deferred to the outbox, Celery task durations and failures, probes) are
  written directly.
- The ledger's state (open holds and their age, the latest probe per route, exports by status,
  the outbox's backlog, the last reconciliation) is read from PostgreSQL and Redis when scraped
  (`LedgerCollector`): it is shared state, the same from every process that serves it.

`/metrics` on the service's port (health.py, behind OPENBILI_METRICS_TOKEN) and `manage.py
metrics_serve` (a port of its own) both answer with `exposition()`.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("openbili.metrics")

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROCESS_DIR:  # prometheus-client writes one file per process there from the first value on
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)

CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_SECONDS = 1.0

# The gateway's own work is well under a millisecond; its buckets resolve that. Upstream time and
# time to first byte are the models' (seconds to minutes).
ADDED_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TASK_BUCKETS = (0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)

REQUESTS = Counter(
    "openbili_requests",
    "Client requests to /v1, by endpoint, requested model (a catalog model, else 'unknown'), HTTP status "
    "and error class ('' for a success).",
    ["endpoint", "model", "status", "error_class"],
)
ADDED = Histogram(
    "openbili_gateway_added_seconds",
    "The gateway's own time per request: the whole request minus the time spent waiting on upstreams "
    "(attempts, and a stream's relay).",
    ["endpoint"],
    buckets=ADDED_BUCKETS,
)
UPSTREAM = Histogram(
    "openbili_upstream_seconds",
    "Time spent waiting on upstreams per request (every attempt; a stream until its last event).",
    ["endpoint", "provider"],
    buckets=UPSTREAM_BUCKETS,
)
FIRST_BYTE = Histogram(
    "openbili_time_to_first_byte_seconds",
    "From the request's arrival to the first byte of a successful answer's body reaching the client.",
    ["endpoint", "stream"],
    buckets=UPSTREAM_BUCKETS,
)
ATTEMPTS = Counter(
    "openbili_upstream_attempts",
    "Upstream attempts by route, provider and outcome ('ok' or the error code the attempt ended with).",
    ["route", "provider", "outcome"],
)
RETRIES = Counter(
    "openbili_upstream_retries",
    "Attempts after a request's first (a retry after a connect error, timeout or 5xx), by the route retried on.",
    ["route", "provider"],
)
LIMITER = Counter(
    "openbili_rate_limit_decisions",
    "Rate-limit decisions for keys under a limit: admitted (from Redis), admitted_lease (from this "
    "process's lease of slots), refused (429), failed_open (Redis unreachable: admitted unlimited).",
    ["decision"],
)
DEFERRED = Counter(
    "openbili_writes_deferred",
    "Ledger writes that could not land (database away) and went to the outbox to be retried: "
    "kind 'settle' (a request's settle) or 'row' (a refused request's usage row).",
    ["kind"],
)
OUTBOX_LANDED = Counter(
    "openbili_outbox_landed", "Deferred writes landed from the outbox (by the gateway or the sweeper)."
)
TASK_SECONDS = Histogram(
    "openbili_task_seconds",
    "Celery task run time by task and outcome (success, retry, failure).",
    ["task", "outcome"],
    buckets=TASK_BUCKETS,
)
TASK_FAILURES = Counter("openbili_task_failures", "Celery task runs that raised (retries included).", ["task"])
PROBES = Counter(
    "openbili_probes", "Route probes by route, provider and outcome (ok, failed).", ["route", "provider", "outcome"]
)


class Tally:
    """The request path's metrics, accumulated in plain dicts and written to prometheus-client's
    values by `flush` (see the module's docstring). Used from one event loop only."""

    __slots__ = ("counts", "observed")

    def __init__(self) -> None:
        self.counts: dict[tuple, float] = {}
        self.observed: dict[tuple, list[float]] = {}

    def count(self, metric: Counter, labels: tuple, amount: float = 1) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + amount

    def observe(self, metric: Histogram, labels: tuple, value: float) -> None:
        key = (metric, labels)
        slots = self.observed.get(key)
        bounds = BOUNDS[metric]
        if slots is None:
            slots = self.observed[key] = [0.0] * (len(bounds) + 1)  # one per bucket (+Inf last), then the sum
        # The first bound >= value: prometheus-client's own rule (`value <= bound`).
        slots[bisect_left(bounds, value)] += 1
        slots[-1] += value

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        observed, self.observed = self.observed, {}
        for (metric, labels), amount in counts.items():
            metric.labels(*map(str, labels)).inc(amount)
        for (metric, labels), slots in observed.items():
            child = metric.labels(*map(str, labels))
            # prometheus-client has no public call to add many observations at once: its buckets
            # and sum are values like any counter's (pinned by tests/ops/test_metrics.py).
            for index, observations in enumerate(slots[:-1]):
                if observations:
                    child._buckets[index].inc(observations)
            child._sum.inc(slots[-1])


class NoTally(Tally):
    """OPENBILI_METRICS=0: the request path counts nothing (to measure what counting costs)."""

    __slots__ = ()

    def count(self, metric: Counter, labels: tuple, amount: float = 1) -> None:
        pass

    def observe(self, metric: Histogram, labels: tuple, value: float) -> None:
        pass


BOUNDS: dict[Histogram, tuple[float, ...]] = {
    metric: (*metric._upper_bounds,)  # the buckets given, then +Inf
    for metric in (ADDED, UPSTREAM, FIRST_BYTE, TASK_SECONDS)
}
ENABLED = os.environ.get("OPENBILI_METRICS", "1") != "0"
TALLY = Tally() if ENABLED else NoTally()


# --- the ledger's state, read when scraped -----------------------------------------------------------


class LedgerCollector:
    """Gauges of shared state from PostgreSQL and Redis. Each query is an index scan of rows that
    are few by design (open holds, routes, a day's exports); a scrape costs a few milliseconds."""

    def describe(self):  # nothing known before collecting: the registry must not collect on register
        return []

    def collect(self):
        from django.db import connections

        ok = GaugeMetricFamily("openbili_ledger_scrape_ok", "1 if the ledger's state could be read from PostgreSQL.")
        try:
            yield from self._database()
            ok.add_metric([], 1)
        except Exception as exc:  # the database is away: say so, and serve the other metrics
            log.warning("metrics: the ledger's state could not be read (%s)", type(exc).__name__)
            ok.add_metric([], 0)
        finally:
            connections.close_all()  # a scrape thread's connection must not outlive it
        yield ok
        yield from self._redis()

    def _database(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), coalesce(sum(amount), 0), "
                "       coalesce(extract(epoch FROM now() - min(created_at)), 0), "
                "       count(*) FILTER (WHERE expires_at < now()) "
                "  FROM billing_hold WHERE resolved_at IS NULL"
            )
            count, amount, oldest, overdue = cursor.fetchone()
            yield _gauge("openbili_holds_open", "Holds open now: requests in flight (and background responses).", count)
            yield _gauge("openbili_holds_open_usd", "Credit reserved by open holds, USD.", float(amount))
            yield _gauge(
                "openbili_hold_oldest_age_seconds", "Age of the oldest open hold (0 with none open).", float(oldest)
            )
            yield _gauge(
                "openbili_holds_overdue",
                "Open holds past their expiry: the sweeper (requests_sweep, every minute) is not running.",
                overdue,
            )
            cursor.execute(
                "SELECT r.id, m.name, r.provider, p.ok, extract(epoch FROM now() - p.checked_at) "
                "  FROM billing_route r JOIN billing_catalogmodel m ON m.id = r.model_id "
                "  LEFT JOIN LATERAL (SELECT ok, checked_at FROM billing_probe "
                "                      WHERE route_id = r.id ORDER BY checked_at DESC LIMIT 1) p ON true "
                " WHERE r.active"
            )
            probe_ok = GaugeMetricFamily(
                "openbili_route_probe_ok",
                "Latest probe of each active route: 1 OK, 0 failed, -1 never probed (a failed route hides its model).",
                labels=["route", "model", "provider"],
            )
            probe_age = GaugeMetricFamily(
                "openbili_route_probe_age_seconds", "Age of each active route's latest probe.", labels=["route"]
            )
            for route_id, model, provider, passed, age in cursor.fetchall():
                probe_ok.add_metric([str(route_id), model, provider], -1 if passed is None else int(passed))
                if age is not None:
                    probe_age.add_metric([str(route_id)], float(age))
            yield probe_ok
            yield probe_age
            cursor.execute(
                "SELECT status, count(*), coalesce(max(extract(epoch FROM now() - created_at)), 0) "
                "  FROM usage_usageexport "
                " WHERE status IN ('queued', 'running') OR created_at > now() - interval '1 day' "
                " GROUP BY status"
            )
            exports = GaugeMetricFamily(
                "openbili_exports",
                "Usage exports queued or running now, and those done, failed or expired in the last day.",
                labels=["status"],
            )
            waiting = GaugeMetricFamily(
                "openbili_export_oldest_age_seconds",
                "Age of the oldest export still queued or running.",
                labels=["status"],
            )
            for status, count, oldest in cursor.fetchall():
                exports.add_metric([status], count)
                if status in ("queued", "running"):
                    waiting.add_metric([status], float(oldest))
            yield exports
            yield waiting

    def _redis(self):
        from django.conf import settings
        from django.core.cache import cache

        last = None
        try:
            last = cache.get(RECONCILE_CACHE_KEY)
        except Exception as exc:
            log.warning("metrics: the last reconciliation could not be read (%s)", type(exc).__name__)
        if last:
            yield _gauge(
                "openbili_reconcile_differences",
                "Differences the last reconciliation found (billing/reconcile.py); anything but 0 pages.",
                last["differences"],
            )
            yield _gauge(
                "openbili_reconcile_last_run_timestamp_seconds", "When the last reconciliation ran.", last["at"]
            )
        if not settings.REDIS_URL or not REDIS_LISTS:
            return
        import redis

        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
            with client:
                lengths = {key: client.llen(key) for key in REDIS_LISTS}
        except Exception as exc:
            log.warning("metrics: Redis could not be read (%s)", type(exc).__name__)
            return
        for key, (name, documentation) in REDIS_LISTS.items():
            yield _gauge(name, documentation, lengths[key])


# Redis lists whose length is a gauge: key -> (metric name, documentation), declared by their
# owners (usage/gateway/outbox.py).
REDIS_LISTS: dict[str, tuple[str, str]] = {}


RECONCILE_CACHE_KEY = "openbili:reconcile:last"


def record_reconcile(differences: int) -> None:
    """The last reconciliation's result, for `openbili_reconcile_*` on every scrape."""
    from django.core.cache import cache

    try:
        cache.set(RECONCILE_CACHE_KEY, {"differences": differences, "at": time.time()}, timeout=None)
    except Exception as exc:  # the result is also logged; a missing gauge is itself alerted on
        log.warning("metrics: the reconciliation's result could not be stored (%s)", type(exc).__name__)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _Local:
    """This process's own registry (no PROMETHEUS_MULTIPROC_DIR: a single process)."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def describe(self):
        return []

    def collect(self):
        return self.registry.collect()


def registry(*, ledger: bool = True) -> CollectorRegistry:
    from prometheus_client import REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    combined = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS_DIR:
        MultiProcessCollector(combined, path=MULTIPROCESS_DIR)  # every process of this host
    else:
        combined.register(_Local(REGISTRY))
    if ledger:
        combined.register(LedgerCollector())
    return combined


_REGISTRIES: dict[bool, CollectorRegistry] = {}


def exposition(*, ledger: bool = True) -> bytes:
    """The text format. Blocking (files, SQL): call it from a thread, never on the event loop (the
    caller flushes its loop's tally first)."""
    if ledger not in _REGISTRIES:
        _REGISTRIES[ledger] = registry(ledger=ledger)
    return generate_latest(_REGISTRIES[ledger])
