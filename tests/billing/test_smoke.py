from decimal import Decimal

from billing import selectors


def test_visible_model_and_opening_credit(account, visible_model):
    assert account.balance == Decimal("100")
    assert selectors.ledger_sum(account_id=account.pk) == Decimal("100")
    assert [m.name for m in selectors.model_visible_list()] == ["gpt-test"]
