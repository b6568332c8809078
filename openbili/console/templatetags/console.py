"""Template filters of the console."""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def utc(value, length: int = 19) -> str:
    """An API timestamp ("2026-12-02T21:30:53.123456Z") as "2026-12-02 21:30:53" (UTC); `length`
    16 drops the seconds."""
    if not value:
        return "—"
    text = value if isinstance(value, str) else value.isoformat()
    return text[: int(length)].replace("T", " ")


@register.filter
def usd(value) -> str:
    """An exact API amount ("99.999918750000") without its trailing zeros, cents kept: "99.99991875",
    "100.00". Never rounded: the ledger's last digit is the customer's money."""
    if value in (None, ""):
        return "—"
    amount = Decimal(str(value))
    text = f"{amount.normalize():f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"
