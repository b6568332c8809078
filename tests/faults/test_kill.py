"""kill -9 of the gateway mid-stream (issue 9, Deliver 2): several streams relaying and requests
waiting for their upstream when the process dies. After a restart and a sweep, every request has
its one finished row, no credit stays held, the ledger is exact — and the rows say what the
clients saw (table row 8)."""

from __future__ import annotations

import threading

import pytest

from tests.faults.harness import Answer, Stack, reconcile, send, wait_until

STREAMS = [("chat", True)] * 3 + [("messages", True)]
HELD = 2  # non-stream requests waiting at the upstream's gate
# 1.5 s of stream: past the second after which a stream marks its row (lifecycle.MARK_AFTER_SECONDS)
CHUNKS_BEFORE_KILL = 30


@pytest.fixture(scope="module")
def killed(stack: Stack):
    """The kill, done once for this module's tests: the clients' answers, the rows after the sweep
    (by request id), the sweep's output, how many rows the kill had left pending."""
    gateway, upstream = stack.ready().gateway, stack.upstream
    assert gateway is not None and upstream is not None
    account = stack.account()
    answers: list[Answer] = []
    lock = threading.Lock()

    def client(surface: str, stream: bool) -> None:
        answer = send(gateway.url, account.secret, surface=surface, stream=stream, timeout=30)
        with lock:
            answers.append(answer)

    # given two requests held at the upstream (no answer yet) ...
    upstream.script(gate="never", times=HELD)
    threads = [threading.Thread(target=client, args=("chat", False)) for _ in range(HELD)]
    for thread in threads:
        thread.start()
    wait_until(lambda: upstream.waiting_at("never") == HELD, what="the held requests at the upstream")
    # ... and four streams relaying, 100 pieces 50 ms apart, each client past its 30th piece
    upstream.script(content=[f" w{i}" for i in range(100)], chunk_delay_ms=50, times=0)
    seen: dict[int, int] = {}
    progress = threading.Condition()

    def counting_client(index: int, surface: str) -> None:
        def on_chunk(answer: Answer) -> None:
            with progress:
                seen[index] = answer.chunks
                progress.notify_all()

        answer = send(gateway.url, account.secret, surface=surface, stream=True, timeout=30, on_chunk=on_chunk)
        with lock:
            answers.append(answer)

    streams = [threading.Thread(target=counting_client, args=(i, s)) for i, (s, _) in enumerate(STREAMS)]
    for thread in streams:
        thread.start()
    with progress:
        assert progress.wait_for(
            lambda: len(seen) == len(STREAMS) and min(seen.values()) >= CHUNKS_BEFORE_KILL, timeout=20
        ), f"streams did not get going: {seen}"
    # when the gateway is killed -9 (nothing runs: no finally, no settle)
    stack.disturbed = True
    gateway.kill9()
    for thread in threads + streams:
        thread.join(timeout=30)
    upstream.reset()
    gateway.start()
    # then, once the sweeper has run (with their holds' expiry moved into the past) ...
    pending = [row["request_id"] for row in stack.db.rows(account.id) if row["billing_result"] == "pending"]
    output = stack.sweep_expired(pending)
    rows = reconcile(stack.db, account, sent=HELD + len(STREAMS), request_ids=[a.request_id for a in answers])
    return answers, rows, output, len(pending)


def test_kill9_mid_stream_then_sweep_leaves_one_finished_row_each_and_the_ledger_exact(killed):
    answers, rows, output, pending = killed
    # the clients saw their streams break (no terminator), the held requests no answer at all
    streams = [a for a in answers if a.stream]
    assert len(streams) == len(STREAMS)
    assert all(a.status == 200 and not a.complete and a.chunks >= CHUNKS_BEFORE_KILL for a in streams), [
        a.describe() for a in streams
    ]
    assert all(a.status is None and a.transport_error for a in answers if not a.stream)
    # every request's row was left pending by the kill, and the sweep finished each exactly once
    assert pending == HELD + len(STREAMS)
    assert f"{pending} expired hold(s) released" in output
    for row in rows.values():
        assert row["billing_result"] != "pending" and row["finished_at"] is not None
        assert row["error_code"] == "interrupted"
    # reconcile() (in the fixture) held: one row per request, nothing held, balance = ledger


def test_kill9_rows_say_what_the_clients_received(killed):
    answers, rows, _, _ = killed
    # streams whose client had received pieces: output reached it, and when it began
    for answer in (a for a in answers if a.stream):
        row = rows[answer.request_id]
        assert answer.chunks > 0
        assert row["output_reached_client"] is True, (answer.describe(), row)
        assert row["first_byte_at"] is not None
        assert row["started_at"] <= row["first_byte_at"] <= row["finished_at"]
        # what the client was answered (a 200 stream), cut short: not a platform error before output
        assert (row["status"], row["error_class"]) == (200, "stream_interrupted")
    # requests that never got an answer: nothing reached their client
    for row in rows.values():
        if not row["stream"]:
            assert row["output_reached_client"] is False and row["first_byte_at"] is None
