"""The ticket flow end to end (issue 12): a customer's requests fail through the live gateway (the
official OpenAI SDK against the fake upstream), the customer opens diagnostic tickets from their
usage rows through the dashboard API, support works them in the admin and refunds one. Nothing a
customer sent or received, no full key, key hash or upstream secret appears in any ticket JSON,
bundle, admin page or e-mail of that flow; the refund moves the balance once through the ledger."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from django.core import mail
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from billing.models import Account, ApiKey, LedgerEntry
from tests.api.conftest import make_user, token_for
from tickets.models import Ticket

PROMPT = "PROMPT-CANARY-7f3a: what is our launch plan?"
COMPLETION = "COMPLETION-CANARY-91b2 the plan is"
ROUTE_SECRET = "upstream-test-secret"  # tests/factories.py make_visible_model


@pytest.fixture
def customer(gateway):
    user = make_user("carol", gateway.account)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")
    return client


@pytest.fixture
def support(transactional_db):
    agent = make_user("agent")
    agent.is_staff = agent.is_superuser = True
    agent.save()
    client = Client()
    client.force_login(agent)
    return client


def failing_requests(gateway) -> dict[str, str]:
    """Two failures a customer would ticket: an upstream error quoting the prompt, and a stream cut
    after part of the completion reached the client. Returns their request ids."""
    sdk = gateway.openai()
    messages = [{"role": "user", "content": PROMPT}]
    gateway.upstream.script(status=502, message=f"upstream choked on: {PROMPT}", times=0)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-5", messages=messages)
    upstream_error = caught.value.response.headers["x-request-id"]
    gateway.upstream.reset()
    gateway.upstream.script(content=COMPLETION, cut_after_chunks=3, chunk_delay_ms=5)
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-5", messages=messages, stream=True)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received and COMPLETION.startswith(received)
    cut = raw.headers["x-request-id"]
    return {"upstream_error": upstream_error, "cut": cut}


def test_from_a_failing_request_to_a_refund_nothing_secret_leaks(gateway, customer, support, settings):
    settings.OPENBILI_SUPPORT_EMAIL = "support@openbili.example"
    requests = failing_requests(gateway)
    rows = {name: gateway.row(request_id) for name, request_id in requests.items()}
    assert rows["upstream_error"].error_code == "upstream_error"
    assert (rows["cut"].error_class, rows["cut"].billing_result) == ("stream_interrupted", "failed_but_billable")
    seen: list[str] = []  # every byte a customer, an operator or a mail shows of this flow

    def keep(response) -> dict | str:
        assert response.status_code in (200, 201), response.content
        seen.append(response.content.decode())
        return response.json() if response["Content-Type"].startswith("application/json") else seen[-1]

    # the customer opens a ticket from each failing row; a second click returns the same ticket
    tickets = {}
    for name, request_id in requests.items():
        body = {"request_id": request_id, "subject": f"{name} on gpt-5", "description": "Failed twice today."}
        tickets[name] = keep(customer.post("/api/v1/tickets/", body, format="json"))
        assert keep(customer.post("/api/v1/tickets/", body, format="json"))["id"] == tickets[name]["id"]
        keep(customer.get(f"/api/v1/usage/{request_id}/bundle"))
    cut = tickets["cut"]["bundle"]
    assert (cut["error_code"], cut["stream"], cut["tokens_received"]) == ("upstream_stream_interrupted", True, True)
    assert cut["cost_usd"] == f"{rows['cut'].cost_usd:f}" and Decimal(cut["cost_usd"]) > 0
    assert tickets["upstream_error"]["bundle"]["retry_advice"].startswith("Wait briefly and retry once")
    keep(customer.get("/api/v1/tickets/"))
    usage = keep(customer.get(f"/api/v1/accounts/{gateway.account.pk}/usage"))
    assert {r["request_id"]: (r["ticket"] or {}).get("id") for r in usage["results"]} == {
        requests[name]: tickets[name]["id"] for name in requests
    }
    # support works the cut stream's ticket in the admin: queue, page, reply, note, refund
    ticket = Ticket.objects.get(pk=tickets["cut"]["id"])
    keep(support.get(reverse("admin:tickets_ticket_changelist")))
    keep(support.get(reverse("admin:tickets_ticket_changelist"), {"q": ticket.request_id}))
    change = keep(support.get(reverse("admin:tickets_ticket_change", args=[ticket.pk])))
    assert ticket.request_id in change and "attempt" in change.lower()
    refund_url = reverse("admin:tickets_ticket_refund", args=[ticket.pk])
    keep(support.get(refund_url))
    cost = rows["cut"].cost_usd
    before = Account.objects.get(pk=gateway.account.pk).balance
    form = {"amount": f"{cost:f}", "reason": "Upstream cut the stream"}
    for _ in range(2):  # a double submit
        answer = support.post(refund_url, form)
        assert answer.status_code == 302, answer.content.decode()[:2000]
    entries = LedgerEntry.objects.filter(ticket=ticket)
    assert [(e.kind, e.amount) for e in entries] == [("refund", cost)]
    account = Account.objects.get(pk=gateway.account.pk)
    assert account.balance == before + cost
    assert account.balance == LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
    keep(support.get(reverse("admin:tickets_ticket_change", args=[ticket.pk])))
    # the customer sees the refund on the ticket and in the ledger
    detail = keep(customer.get(f"/api/v1/tickets/{ticket.pk}"))
    assert [r["amount"] for r in detail["refunds"]] == [f"{cost:f}"]
    ledger = keep(customer.get(f"/api/v1/accounts/{gateway.account.pk}/ledger", {"kind": "refund"}))
    assert [e["ticket"] for e in ledger["results"]] == [ticket.pk]
    # and the mails support got: one per new ticket
    assert len(mail.outbox) == 2
    seen += [message.subject + message.body for message in mail.outbox]

    key = ApiKey.objects.get(account=gateway.account)
    text = "\n".join(seen)
    for forbidden in (gateway.secret, key.key_hash, ROUTE_SECRET, "PROMPT-CANARY", "COMPLETION-CANARY"):
        assert forbidden not in text, forbidden
    assert key.prefix in text  # the key is named by its prefix, as promised
