"""Redis down under load (issue 9, Deliver 2). Rate limits live in Redis; without it the limiter
fails open with a warning (usage/gateway/limits.py: the ledger still protects the money, refusing
every customer would be worse), so requests are still served and billed. Once Redis is back, the
limits count again."""

from __future__ import annotations

import time

from tests.faults.harness import RPM_LIMITED, Load, assert_error_format, reconcile, send

MIX = [("chat", False), ("chat", True), ("messages", False), ("messages", True)]
FAIL_OPEN = "rate limiter unavailable (ConnectionError): requests are not rate limited"


def test_redis_down_under_load_requests_are_served_and_billed_then_limits_return(faults):
    gateway, redis = faults.gateway, faults.redis
    busy, limited = faults.named["busy"], faults.named["limited"]  # both keys under an RPM limit
    faults.upstream.script(delay_first_byte_ms=10, times=0)
    offset = len(gateway.log())
    # given load on a key whose every request is counted in Redis
    with Load(gateway.url, busy.secret, concurrency=4, mix=MIX) as load:
        time.sleep(0.5)
        # when Redis stops
        redis.stop()
        time.sleep(0.5)
        # then a key already over its limit is not refused either: the limiter fails open
        over = [send(gateway.url, limited.secret, surface=s, stream=st) for s, st in MIX * 4]
        time.sleep(1.0)
        redis.start()  # empty: no persistence
        time.sleep(1.0)
    served = load.answers
    assert len(over) > RPM_LIMITED
    bad = [a.describe() for a in served + over if not (a.status == 200 and a.complete)]
    assert not bad, f"requests not served while Redis was down: {bad[:8]}"
    assert max(a.elapsed for a in served + over) < 1.0, "a request waited on the unreachable Redis"
    assert FAIL_OPEN in gateway.log_since(offset), "no warning that requests are not rate limited"
    # and billed: one row each, the ledger exact
    rows = reconcile(faults.db, busy, sent=len(served), request_ids=[a.request_id for a in served])
    assert {row["billing_result"] for row in rows.values()} == {"billed"}

    # when Redis is back, limits count again: the limited key gets its RPM_LIMITED requests of a
    # fresh window (Redis restarted empty; the failed-open ones were never counted), then 429
    if 60 - time.time() % 60 < 5:  # not across a minute boundary: the window would start over
        time.sleep(60 - time.time() % 60 + 0.1)
    again = [send(gateway.url, limited.secret) for _ in range(RPM_LIMITED + 2)]
    statuses = [a.status for a in again]
    assert statuses == [200] * RPM_LIMITED + [429] * 2, [a.describe() for a in again]
    assert_error_format(again[-1], status=429, code="rate_limit_exceeded")
    assert int(again[-1].headers["retry-after"]) >= 1
    counters = redis.command("KEYS", f"openbili-limits:k{limited.key_id}:r:*")
    assert b"openbili-limits" in counters, counters
    rows = reconcile(faults.db, limited, sent=len(over) + len(again), request_ids=[a.request_id for a in over + again])
    refused = [rows[a.request_id] for a in again[RPM_LIMITED:]]
    assert all((r["status"], r["error_code"], r["cost_usd"]) == (429, "rate_limit_exceeded", 0) for r in refused)
