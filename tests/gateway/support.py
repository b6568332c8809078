"""Shared checks for the gateway contract tests: the ledger invariants and the error body shape."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import urlsplit

from billing import money, selectors
from billing.models import Account, Hold, PriceSnapshot
from tests.gateway_fixtures import GPT_PRICES
from usage.models import UsageRecord

START_CREDIT = Decimal("100")
PRICES = money.Prices(**GPT_PRICES)
MSG = [{"role": "user", "content": "Hello from Openbili"}]


def cost_of(**tokens: int) -> Decimal:
    """The exact cost of a usage at gpt-5's fixture prices ($1.25 / $10 / $0.125 per 1M)."""
    return money.usage_cost(PRICES, money.TokenUsage(**tokens))


def row_cost(row: UsageRecord) -> Decimal:
    """What a row's own tokens cost at its own price snapshot."""
    usage = money.TokenUsage(
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cached_input_tokens=row.cached_input_tokens,
        cache_write_tokens=row.cache_write_tokens,
        images=row.image_count,
    )
    return money.usage_cost(PriceSnapshot.objects.get(pk=row.price_snapshot_id).prices(), usage)


def assert_ledger(account_id: int, *, spent: Decimal, credit: Decimal = START_CREDIT) -> Account:
    """Balance == ledger sum == credit - spent; nothing reserved; no hold left open."""
    account = Account.objects.get(pk=account_id)
    assert account.balance == selectors.ledger_sum(account_id=account_id)
    assert account.balance == credit - spent
    assert account.reserved == 0
    assert not Hold.objects.filter(account_id=account_id, state=Hold.State.OPEN).exists()
    return account


def assert_outcome(
    gateway,
    request_id: str,
    *,
    billing_result: str,
    status: int,
    cost: Decimal,
    error_class: str = "",
    error_code: str = "",
    spent: Decimal | None = None,
    account_id: int | None = None,
    credit: Decimal = START_CREDIT,
) -> UsageRecord:
    """The one usage row of a request, with the expected outcome, and the ledger invariants after it.

    `spent` is everything the account was charged in the test so far (defaults to this row's cost).
    """
    assert request_id.startswith("req_")
    assert UsageRecord.objects.filter(request_id=request_id).count() == 1
    row = gateway.row(request_id)
    assert (row.billing_result, row.status) == (billing_result, status)
    assert (row.error_class, row.error_code) == (error_class, error_code)
    assert row.cost_usd == cost
    if billing_result == "not_billed":
        assert cost == 0
    assert_ledger(account_id or gateway.account.pk, spent=cost if spent is None else spent, credit=credit)
    return row


def assert_no_row(request_id: str) -> None:
    assert request_id.startswith("req_")
    assert not UsageRecord.objects.filter(request_id=request_id).exists()


def assert_ids(headers) -> tuple[str, str]:
    """Every /v1 response carries x-request-id: req_… and x-trace-id: trace_…"""
    request_id, trace_id = headers.get("x-request-id"), headers.get("x-trace-id")
    assert request_id and request_id.startswith("req_"), headers
    assert trace_id and trace_id.startswith("trace_"), headers
    return request_id, trace_id


def assert_error_body(response, *, status: int, code: str, param: str | None = None, type_: str | None = None) -> str:
    """The OpenAI error shape with the ids matching the headers; returns the request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id, trace_id = assert_ids(response.headers)
    body = json.loads(response.content)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param", "request_id", "trace_id"}
    assert error["code"] == code
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if type_ is not None:
        assert error["type"] == type_
    assert (error["request_id"], error["trace_id"]) == (request_id, trace_id)
    return request_id


def assert_sdk_error(exc, *, status: int, code: str, param: str | None = None) -> str:
    """An openai SDK APIStatusError raised from one of our error bodies; returns the request id."""
    assert exc.status_code == status
    assert exc.code == code
    assert exc.body["code"] == code and exc.body["param"] == param
    return assert_error_body(exc.response, status=status, code=code, param=param)


def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = 60.0) -> None:
    """Wait for an event (never for a duration): the timeout only bounds a test that would hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def rejected(gateway, request_id: str, status: int, error_class: str, error_code: str, **kwargs) -> UsageRecord:
    """A request refused before anything billable: one not_billed row, nothing charged."""
    return assert_outcome(
        gateway,
        request_id,
        billing_result="not_billed",
        status=status,
        cost=Decimal(0),
        error_class=error_class,
        error_code=error_code,
        **kwargs,
    )


def sse_events(raw: bytes) -> list[tuple[str, bytes]]:
    """(event name, data) of each SSE event of a body, in order (either line ending)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[len(b"event:") :].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[len(b"data:") :].strip())
        if name or data:
            events.append((name, b"\n".join(data)))
    return events


def raw_exchange(url: str, head: str, body: bytes = b"") -> tuple[bytes, dict]:
    """Send a request head (and maybe part of a body) on a socket; the answer's status line and JSON."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_and_headers, _, payload = answer.partition(b"\r\n\r\n")
    return status_and_headers.split(b"\r\n")[0], json.loads(payload)
