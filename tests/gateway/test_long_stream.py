"""A stream that outlives its hold's lifetime renews the hold, so the sweeper (which releases holds
of requests that died) never releases a live request's hold and the stream is billed."""

import threading

from django.db import connection

import usage.gateway.lifecycle as lifecycle
from tests.gateway.support import MSG, assert_ledger, cost_of
from usage.services import requests_sweep


def test_a_stream_longer_than_its_hold_ttl_is_billed(gateway, monkeypatch):
    monkeypatch.setattr(lifecycle, "hold_ttl", lambda model: 1)  # seconds: renewed every third of it
    gateway.upstream.script(chunk_delay_ms=250, tokens={"prompt": 10, "completion": 8})  # ~2 s stream
    stop = threading.Event()

    def sweep_all_the_time():
        try:
            while not stop.is_set():
                requests_sweep()
                stop.wait(0.05)
        finally:
            connection.close()

    sweeper = threading.Thread(target=sweep_all_the_time)
    sweeper.start()
    try:
        stream = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, stream=True)
        chunks = list(stream.parse())
    finally:
        stop.set()
        sweeper.join()

    assert chunks
    row = gateway.row(stream.headers["x-request-id"])
    assert (row.billing_result, row.error_code) == ("billed", "")
    assert row.cost_usd == cost_of(input_tokens=10, output_tokens=8)
    assert_ledger(gateway.account.pk, spent=row.cost_usd)
