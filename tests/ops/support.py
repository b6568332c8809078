"""Reading the metrics as Prometheus would: scraped from the live gateway's /metrics, parsed."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-token-for-tests"


def scrape(gateway) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape. The scrape flushes the serving
    process's tally itself; the flush runs on the gateway's loop, so this asks it there."""
    response = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= set(series))


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
