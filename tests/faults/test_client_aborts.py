"""Clients that go away at each phase of a request (issue 9, Deliver 2; table rows 7 and 8): before
their body is complete, while the upstream works, mid-stream. Each still has its one row, saying
what the client got — 499 when it left before its request was read; otherwise the work the
upstream did is billed and the row says whether any output reached the client — and the ledger
reconciles."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

from tests.faults.harness import Answer, raw_head, reconcile, request_body, row_cost, send

KINDS = [("chat", False), ("chat", True), ("messages", False), ("messages", True)]


def concurrently(calls) -> list[Answer]:
    answers: list[Answer] = []
    lock = threading.Lock()

    def run(call) -> None:
        answer = call()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_clients_gone_before_their_body_was_read_have_499_rows(faults, account):
    # given clients that announce their whole body, send its first bytes and close
    parts = urlsplit(faults.gateway.url)
    clients = 6
    for i in range(clients):
        surface, stream = KINDS[i % len(KINDS)]
        body = json.dumps(request_body(surface, stream=stream)).encode()
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(raw_head(faults.gateway.url, account.secret, surface, content_length=len(body)) + body[:8])
    # then each has its row: 499, not billed, the client's disconnect time; the upstream never called
    rows = reconcile(faults.db, account, sent=clients)
    for row in rows.values():
        assert (row["status"], row["billing_result"], row["error_class"], row["error_code"]) == (
            499,
            "not_billed",
            "stream_interrupted",
            "client_disconnected",
        )
        assert row["client_disconnected_at"] is not None and row["cost_usd"] == 0
        assert row["output_reached_client"] is False
    assert not faults.upstream.requests


def test_clients_gone_while_the_upstream_works_are_billed_for_what_it_did_and_got_nothing(faults, account):
    # given an upstream holding every answer (100 tokens in, 8 out) until the test opens its gate
    faults.upstream.script(gate="work", tokens={"prompt": 100, "completion": 8}, times=0)
    # when clients give up waiting (a 1 s read timeout) for non-stream and stream answers alike
    calls = [
        lambda s=s, st=st: send(faults.gateway.url, account.secret, surface=s, stream=st, timeout=1.0)
        for s, st in KINDS
    ]
    answers = concurrently(calls)
    assert all(a.transport_error == "ReadTimeout" and a.status is None for a in answers), [
        a.describe() for a in answers
    ]
    assert faults.upstream.waiting_at("work") == len(KINDS)
    time.sleep(0.3)  # the gateway notices the disconnects (its watcher reads http.disconnect)
    faults.upstream.open_gate("work")
    # then each row says the client left and got no output; what the upstream reported is billed
    rows = reconcile(faults.db, account, sent=len(KINDS))
    for row in rows.values():
        assert row["client_disconnected_at"] is not None
        assert (row["status"], row["error_class"], row["error_code"]) == (
            200,
            "stream_interrupted",
            "client_disconnected",
        )
        assert row["output_reached_client"] is False and row["first_byte_at"] is None
        assert row["cost_usd"] == row_cost(row)
        if not row["stream"]:
            assert (row["billing_result"], row["input_tokens"], row["output_tokens"]) == ("failed_but_billable", 100, 8)
            assert row["started_at"] <= row["client_disconnected_at"] <= row["finished_at"]
        else:  # the stream never began for the client: billed only for what the upstream sent before it stopped
            assert row["billing_result"] in ("failed_but_billable", "not_billed")


def test_clients_gone_mid_stream_are_billed_for_what_was_generated(faults, account):
    # given streams of 20 pieces, 100 ms apart
    faults.upstream.script(content=[f" p{i}" for i in range(20)], chunk_delay_ms=100, times=0)
    # when each client closes the connection after its third piece
    calls = [
        lambda s=s: send(faults.gateway.url, account.secret, surface=s, stream=True, abort_after=3)
        for s in ("chat", "messages") * 2
    ]
    answers = concurrently(calls)
    assert all(a.status == 200 and a.chunks == 3 for a in answers), [a.describe() for a in answers]
    # then each row: output reached the client, it left, what was generated until then is billed
    rows = reconcile(faults.db, account, sent=len(answers), request_ids=[a.request_id for a in answers])
    for answer in answers:
        row = rows[answer.request_id]
        assert (row["status"], row["billing_result"]) == (200, "failed_but_billable")
        assert (row["error_class"], row["error_code"]) == ("stream_interrupted", "client_disconnected")
        assert row["output_reached_client"] is True
        assert row["started_at"] <= row["first_byte_at"] <= row["client_disconnected_at"] <= row["finished_at"]
        assert (row["finished_at"] - row["started_at"]).total_seconds() < 1.5  # the relay stopped: not 2 s
        assert row["output_tokens"] > 0 and row["tokens_estimated"] is True
        assert row["cost_usd"] == row_cost(row) > 0
