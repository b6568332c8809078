"""A stream that outlives its hold's lifetime renews the hold, so the sweeper (which releases holds
of requests that died) never releases a live request's hold and the stream is billed; one that
really died leaves a row that says what its client saw."""

import threading

import httpx
from django.db import connection

import usage.gateway.lifecycle as lifecycle
from billing.models import Hold
from tests.gateway.support import MSG, assert_ledger, cost_of, wait_until
from usage.models import UsageRecord
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


def test_a_row_finished_by_the_sweeper_keeps_what_the_client_saw(gateway, monkeypatch):
    """Issue 9 #8: a gateway killed mid-stream leaves the pending row to the sweeper; a stream that
    had been reaching its client said so on the row beforehand (lifecycle.Call.mark), so the row
    tells the truth: first byte sent, output reached, stream interrupted."""
    monkeypatch.setattr(lifecycle, "MARK_AFTER_SECONDS", 0.2)
    gateway.upstream.script(chunk_delay_ms=200, content=[f"w{i} " for i in range(15)])  # ~3 s stream
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-5", "messages": MSG, "stream": True},
        headers={"Authorization": f"Bearer {gateway.secret}"},
        timeout=20,
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        assert any('"w0 "' in line for line in lines)  # output reached this client
        wait_until(
            lambda: UsageRecord.objects.filter(request_id=request_id, output_reached_client=True).exists(),
            what="the stream's mark",
        )
        row = UsageRecord.objects.get(request_id=request_id)
        assert (row.billing_result, row.status) == ("pending", 200)
        assert row.first_byte_at is not None
        # As after kill -9: the hold expires and the sweeper finishes the row.
        Hold.objects.filter(pk=row.hold_id).update(expires_at=row.started_at)
        assert requests_sweep() == 1
    row.refresh_from_db()
    assert (row.billing_result, row.status, row.error_code) == ("not_billed", 200, "interrupted")
    assert row.error_class == "stream_interrupted"
    assert row.output_reached_client and row.first_byte_at is not None
    assert_ledger(gateway.account.pk, spent=0)


def test_a_short_stream_settles_without_marking(gateway):
    """The mark costs a statement only for streams that last (MARK_AFTER_SECONDS): one that ends
    first is written once, by its settle."""
    marks = gateway.server.state.marks
    before = sum(marks.sizes.values())
    stream = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, stream=True)
    assert list(stream.parse())
    row = gateway.row(stream.headers["x-request-id"])
    assert row.billing_result == "billed" and row.output_reached_client
    assert sum(marks.sizes.values()) == before
