from decimal import Decimal

from billing import selectors
from billing.models import Account


def test_chat_completion_is_billed(gateway):
    client = gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-5", messages=[{"role": "user", "content": "Hello from Openbili"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    row = gateway.row(raw.headers["x-request-id"])
    assert row.billing_result == "billed"
    assert row.status == 200
    assert row.cost_usd > 0
    account = Account.objects.get(pk=gateway.account.pk)
    assert account.balance == Decimal("100") - row.cost_usd == selectors.ledger_sum(account_id=account.pk)
    assert account.reserved == 0
