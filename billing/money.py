"""The only place money is computed or rounded.

Rules (also in the README):
- Money is `Decimal` USD, never float. Amounts are stored as NUMERIC(24, 12).
- A usage cost keeps 12 decimal places (`COST_PLACES`), rounded half-even once per price component.
- Rounding to cents (`to_cents`, half-even) happens once, on invoice lines, never on the ledger.
- Prices are USD per 1M tokens, per image and per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

MONEY_DIGITS = 24
MONEY_PLACES = 12
PRICE_DIGITS = 20
PRICE_PLACES = 10
COST_PLACES = Decimal(1).scaleb(-MONEY_PLACES)  # 1e-12
CENT = Decimal("0.01")
MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class MoneyError(ValueError):
    pass


def usd(value: Decimal | int | str) -> Decimal:
    """Parse an amount. Floats are refused: they cannot represent most cent values exactly."""
    if isinstance(value, float | bool):
        raise MoneyError("money must be a Decimal, an int or a decimal string, not a float")
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise MoneyError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    if _decimal_places(amount) > MONEY_PLACES:
        raise MoneyError(f"more than {MONEY_PLACES} decimal places: {value!r}")
    return amount


def _decimal_places(amount: Decimal) -> int:
    """Places needed to write a finite amount exactly: 1.5000000000000 needs 1, not 13."""
    _, digits, exponent = amount.as_tuple()
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return 0
    return max(0, -(int(exponent) + len(digits) - len(significant)))


def quantize_cost(amount: Decimal) -> Decimal:
    return amount.quantize(COST_PLACES, ROUND_HALF_EVEN)


def token_cost(tokens: int, usd_per_million: Decimal) -> Decimal:
    return quantize_cost(Decimal(tokens) * usd_per_million / MILLION)


def to_cents(amount: Decimal) -> Decimal:
    """Invoice-line rounding: half-even to the cent, applied once per line."""
    return amount.quantize(CENT, ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Prices:
    """One frozen set of prices (a price snapshot). USD per 1M tokens, per image, per request."""

    input_per_mtok: Decimal = ZERO
    output_per_mtok: Decimal = ZERO
    cached_input_per_mtok: Decimal = ZERO
    cache_write_per_mtok: Decimal = ZERO
    per_image: Decimal = ZERO
    per_request: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Usage normalised across providers (done once, in each upstream adapter).

    `input_tokens` are the uncached input tokens only; cached reads and cache writes are counted
    beside them (Anthropic's convention). OpenAI reports cached tokens inside prompt_tokens, so its
    adapter subtracts them. `reasoning_tokens` are part of `output_tokens`, reported for information.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0

    @property
    def is_empty(self) -> bool:
        return not (
            self.input_tokens
            or self.output_tokens
            or self.cached_input_tokens
            or self.cache_write_tokens
            or self.images
        )


def usage_cost(prices: Prices, usage: TokenUsage, *, requests: int = 1) -> Decimal:
    """Exact cost of one request: each component rounded to 12 places, then summed."""
    return (
        token_cost(usage.input_tokens, prices.input_per_mtok)
        + token_cost(usage.cached_input_tokens, prices.cached_input_per_mtok)
        + token_cost(usage.cache_write_tokens, prices.cache_write_per_mtok)
        + token_cost(usage.output_tokens, prices.output_per_mtok)
        + quantize_cost(prices.per_image * usage.images)
        + quantize_cost(prices.per_request * requests)
    )


def max_cost(prices: Prices, *, max_input_tokens: int, max_output_tokens: int, images: int = 0) -> Decimal:
    """Upper bound of a request's cost, reserved before calling upstream.

    Every input token is priced at the dearest input rate (a cache write can cost more than a plain
    input token), so whatever the upstream reports, the actual cost never exceeds this.
    """
    dearest_input = max(prices.input_per_mtok, prices.cached_input_per_mtok, prices.cache_write_per_mtok)
    return (
        _input_cost_bound(max_input_tokens, dearest_input)
        + token_cost(max_output_tokens, prices.output_per_mtok)
        + quantize_cost(prices.per_image * images)
        + quantize_cost(prices.per_request)
    )


def _input_cost_bound(tokens: int, usd_per_million: Decimal) -> Decimal:
    """The most the three input components of `usage_cost` can add up to for `tokens` input tokens.

    Pricing all tokens at the dearest rate is not enough on its own: `usage_cost` rounds each
    component half-even, so when a per-token rate has more than 12 decimal places the three rounded
    parts can exceed the rounded whole (3 + 3 tokens at $0.0000005/M cost 2e-12 + 2e-12, while 6
    tokens round to 3e-12). Each part is at most half a unit (1e-12) above its exact value, so their
    sum is at most the exact total rounded up plus one unit.
    """
    per_token = usd_per_million / MILLION
    if not tokens or per_token == quantize_cost(per_token):
        return token_cost(tokens, usd_per_million)  # every split is exact: no rounding to cover
    return (Decimal(tokens) * per_token).quantize(COST_PLACES, ROUND_CEILING) + COST_PLACES
