"""Upstream fault bursts at c=16 (issue 9, Deliver 2), injected by the fake upstream: every client
gets the documented answer in its surface's format (CONTRACT §2.1), every row says what happened
(a failure before any output is not billed; a stream cut after output is billed for what was
consumed), and the ledger reconciles."""

from __future__ import annotations

import json
import threading

import pytest

from tests.faults.harness import Answer, Stack, assert_error_format, reconcile, row_cost, send

CONCURRENCY = 16


def burst(faults: Stack, account, mix: list[tuple[str, bool]]) -> list[Answer]:
    """All of `mix` at once, one client each."""
    answers: list[Answer] = []
    lock = threading.Lock()
    start = threading.Barrier(len(mix))

    def client(surface: str, stream: bool) -> None:
        start.wait()
        answer = send(faults.gateway.url, account.secret, surface=surface, stream=stream, timeout=20)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=client, args=item) for item in mix]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answers) == len(mix)
    return answers


def mixed(n: int = CONCURRENCY) -> list[tuple[str, bool]]:
    kinds = [("chat", False), ("chat", True), ("messages", False), ("messages", True)]
    return [kinds[i % len(kinds)] for i in range(n)]


def attempts(row: dict) -> list:
    value = row["attempts"]
    return json.loads(value) if isinstance(value, str) else value


def documented_5xx(surface: str, status: int) -> tuple[int, str]:
    """What a client is told after an upstream 5xx on its route (README's error table): overload
    (503; Anthropic's 529 too) is upstream_unavailable, any other 5xx an upstream error."""
    if status == 503 or (surface == "messages" and status == 529):
        return 503, "upstream_unavailable"
    return 502, "upstream_error"


@pytest.mark.parametrize("status", [500, 503, 529])
def test_upstream_5xx_burst_is_retried_once_then_an_error_not_billed(faults, account, status):
    # given an upstream failing every request with a 5xx
    faults.upstream.script(status=status, times=0)
    # when 16 clients call at once, streams and not
    answers = burst(faults, account, mixed())
    # then each gets the documented error in its format (a stream too: nothing was sent yet) ...
    for answer in answers:
        expected, code = documented_5xx(answer.surface, status)
        assert_error_format(answer, status=expected, code=code)
    # ... after one retry, and nothing is billed
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for answer in answers:
        row = rows[answer.request_id]
        assert (row["status"], row["billing_result"], row["cost_usd"]) == (answer.status, "not_billed", 0)
        assert [a["status"] for a in attempts(row)] == [status, status]
        assert row["output_reached_client"] is False
    assert len(faults.upstream.requests) == 2 * len(answers)


def test_upstream_429_burst_is_passed_on_with_retry_after_not_billed(faults, account):
    faults.upstream.script(status=429, retry_after=7, times=0)
    answers = burst(faults, account, mixed())
    for answer in answers:
        assert_error_format(answer, status=429, code="upstream_rate_limited")
        assert answer.headers["retry-after"] == "7"
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for row in rows.values():
        assert (row["status"], row["billing_result"], row["cost_usd"]) == (429, "not_billed", 0)
        assert [a["status"] for a in attempts(row)] == [429]  # a 429 is not retried


def test_upstream_cut_streams_end_with_an_error_event_and_bill_what_was_consumed(faults, account):
    # given an upstream that drops every stream after three pieces
    faults.upstream.script(cut_after_chunks=3, chunk_delay_ms=5, times=0)
    answers = burst(faults, account, [("chat", True), ("messages", True)] * (CONCURRENCY // 2))
    # then each client got the three pieces, then an error event instead of the terminator
    for answer in answers:
        assert (answer.status, answer.chunks, answer.complete) == (200, 3, False), answer.describe()
        assert answer.error_code == "upstream_stream_interrupted", answer.body
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for row in rows.values():
        assert (row["status"], row["billing_result"]) == (200, "failed_but_billable")
        assert (row["error_class"], row["error_code"]) == ("stream_interrupted", "upstream_stream_interrupted")
        assert row["output_reached_client"] is True and row["first_byte_at"] is not None
        assert row["output_tokens"] > 0 and row["cost_usd"] == row_cost(row) > 0


def test_upstream_cut_bodies_are_retried_once_then_504_not_billed(faults, account):
    # given an upstream that sends half of every non-stream body, then closes
    faults.upstream.script(cut_after_chunks=0, times=0)
    answers = burst(faults, account, [("chat", False), ("messages", False)] * (CONCURRENCY // 2))
    for answer in answers:
        assert_error_format(answer, status=504, code="upstream_timeout")
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for row in rows.values():
        assert (row["status"], row["billing_result"], row["cost_usd"]) == (504, "not_billed", 0)
        assert len(attempts(row)) == 2


def test_mixed_upstream_faults_burst(faults, account):
    # given 5xx, 429 and cuts interleaved with normal answers, consumed in arrival order
    for scenario in ({"status": 500}, {"status": 429}, {"cut_after_chunks": 2}, {}, {"status": 503}, {}):
        faults.upstream.script(times=4, **scenario)
    answers = burst(faults, account, mixed(2 * CONCURRENCY))
    # then every answer is one of the documented ones, and its row says the same; each 429 was
    # one request's (never retried), the 5xx and cuts were retried into answers of all kinds
    assert sum(a.status == 429 for a in answers) == 4
    assert any(a.status in (502, 503, 504) for a in answers) and any(a.complete for a in answers)
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for answer in answers:
        row = rows[answer.request_id]
        assert row["status"] == answer.status
        if answer.status == 200 and answer.complete:
            assert row["billing_result"] == "billed" and row["cost_usd"] == row_cost(row) > 0
        elif answer.status == 200:  # a stream cut after output
            assert answer.error_code == "upstream_stream_interrupted"
            assert row["billing_result"] == "failed_but_billable"
        else:
            code = {
                502: "upstream_error",
                503: "upstream_unavailable",
                429: "upstream_rate_limited",
                504: "upstream_timeout",
            }[answer.status]
            assert_error_format(answer, status=answer.status, code=code)
            assert (row["billing_result"], row["cost_usd"]) == ("not_billed", 0)
