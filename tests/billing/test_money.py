"""billing/money.py: exact Decimal costs, one rounding mode, and a reservation bound that holds."""

from decimal import Decimal

import pytest

from billing.money import (
    CENT,
    COST_PLACES,
    MoneyError,
    Prices,
    TokenUsage,
    max_cost,
    to_cents,
    token_cost,
    usage_cost,
    usd,
)

# --- token_cost ----------------------------------------------------------------------------------


def test_one_million_tokens_cost_exactly_the_per_million_price():
    assert token_cost(1_000_000, Decimal("2.50")) == Decimal("2.50")


def test_one_token_at_two_cents_per_million_keeps_full_precision():
    cost = token_cost(1, Decimal("0.02"))

    assert cost == Decimal("0.00000002")
    assert cost.as_tuple().exponent == -12  # kept at 12 places, never rounded to cents here


def test_zero_tokens_cost_nothing():
    assert token_cost(0, Decimal("15")) == Decimal(0)


@pytest.mark.parametrize(
    ("tokens", "usd_per_million", "expected"),
    [
        # $0.0000005/M is 5e-13 per token: every odd count lands exactly on a half unit of 1e-12.
        (1, "0.0000005", "0"),  # 0.5e-12 -> 0 (to even)
        (3, "0.0000005", "0.000000000002"),  # 1.5e-12 -> 2e-12 (to even)
        (5, "0.0000005", "0.000000000002"),  # 2.5e-12 -> 2e-12 (to even, not up)
        (7, "0.0000005", "0.000000000004"),  # 3.5e-12 -> 4e-12
        (1, "0.0000006", "0.000000000001"),  # 0.6e-12 -> 1e-12 (not a tie)
        (1, "0.0000004", "0"),  # 0.4e-12 -> 0
        (1, "1.2345678901", "0.000001234568"),  # 1.2345678901e-6 -> ...568 (0.9 rounds up)
    ],
)
def test_token_cost_rounds_half_even_at_twelve_places(tokens, usd_per_million, expected):
    assert token_cost(tokens, Decimal(usd_per_million)) == Decimal(expected)


# --- usage_cost ----------------------------------------------------------------------------------

PRICES = Prices(
    input_per_mtok=Decimal("1.25"),
    output_per_mtok=Decimal("10"),
    cached_input_per_mtok=Decimal("0.125"),
    cache_write_per_mtok=Decimal("1.5625"),
    per_image=Decimal("0.04"),
    per_request=Decimal("0.001"),
)


def test_usage_cost_is_the_exact_sum_of_every_component():
    usage = TokenUsage(
        input_tokens=1000,  # 0.00125
        output_tokens=500,  # 0.005
        cached_input_tokens=2000,  # 0.00025
        cache_write_tokens=300,  # 0.00046875
        reasoning_tokens=200,  # part of output_tokens: no extra cost
        images=2,  # 0.08
    )  # + one request: 0.001

    assert usage_cost(PRICES, usage) == Decimal("0.08796875")


def test_usage_cost_of_an_empty_usage_is_the_per_request_price():
    assert usage_cost(PRICES, TokenUsage()) == Decimal("0.001")
    assert usage_cost(PRICES, TokenUsage(), requests=0) == Decimal(0)


def test_usage_cost_rounds_each_component_then_sums():
    prices = Prices(input_per_mtok=Decimal("0.0000005"), cached_input_per_mtok=Decimal("0.0000005"))

    # 3 input + 3 cached: each 1.5e-12 -> 2e-12; the unrounded total would be 3e-12.
    assert usage_cost(prices, TokenUsage(input_tokens=3, cached_input_tokens=3)) == Decimal("4E-12")


def test_reasoning_tokens_alone_cost_nothing_extra():
    with_reasoning = TokenUsage(output_tokens=100, reasoning_tokens=80)
    without = TokenUsage(output_tokens=100)

    assert usage_cost(PRICES, with_reasoning) == usage_cost(PRICES, without) == Decimal("0.002")


# --- max_cost ------------------------------------------------------------------------------------

PRICE_TABLE = {
    "openai-like": PRICES,
    "cache-write-dearest": Prices(
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        cached_input_per_mtok=Decimal("0.3"),
        cache_write_per_mtok=Decimal("3.75"),
    ),
    "cached-dearest": Prices(input_per_mtok=Decimal("1"), cached_input_per_mtok=Decimal("2")),
    "ten-decimal-places": Prices(
        input_per_mtok=Decimal("1.2345678901"),
        output_per_mtok=Decimal("9.8765432109"),
        cached_input_per_mtok=Decimal("0.1234567891"),
        cache_write_per_mtok=Decimal("1.2345678901"),
        per_request=Decimal("0.0000000001"),
    ),
    "half-unit-ties": Prices(
        input_per_mtok=Decimal("0.0000005"),
        output_per_mtok=Decimal("0.0000005"),
        cached_input_per_mtok=Decimal("0.0000005"),
        cache_write_per_mtok=Decimal("0.0000005"),
    ),
    "free": Prices(),
}


def _splits(total: int):
    """Every way to split `total` input tokens across uncached, cached and cache-write."""
    for uncached in range(total + 1):
        for cached in range(total + 1 - uncached):
            yield uncached, cached, total - uncached - cached


@pytest.mark.parametrize("price_name", PRICE_TABLE)
def test_max_cost_covers_every_split_of_the_input_tokens(price_name):
    prices = PRICE_TABLE[price_name]
    for total in range(40):
        bound = max_cost(prices, max_input_tokens=total, max_output_tokens=7)
        for uncached, cached, write in _splits(total):
            usage = TokenUsage(
                input_tokens=uncached, cached_input_tokens=cached, cache_write_tokens=write, output_tokens=7
            )
            assert usage_cost(prices, usage) <= bound, (price_name, uncached, cached, write)


@pytest.mark.parametrize("price_name", PRICE_TABLE)
@pytest.mark.parametrize(
    ("max_input", "split", "max_output", "output"),
    [
        (1_000_000, (1_000_000, 0, 0), 4096, 4096),
        (1_000_000, (0, 1_000_000, 0), 4096, 0),
        (1_000_000, (0, 0, 1_000_000), 4096, 1),
        (200_001, (66_667, 66_667, 66_667), 32_000, 31_999),
        (200_001, (100_000, 1, 100_000), 1, 1),
        (128_000, (127_999, 0, 0), 16_384, 16_384),
        (54, (50, 0, 4), 0, 0),  # a split that exceeded the dearest-rate product before the fix
    ],
)
def test_max_cost_covers_large_requests(price_name, max_input, split, max_output, output):
    prices = PRICE_TABLE[price_name]
    uncached, cached, write = split
    usage = TokenUsage(
        input_tokens=uncached, cached_input_tokens=cached, cache_write_tokens=write, output_tokens=output
    )

    assert usage_cost(prices, usage) <= max_cost(prices, max_input_tokens=max_input, max_output_tokens=max_output)


def test_max_cost_with_exact_rates_is_the_dearest_rate_times_the_tokens():
    prices = PRICE_TABLE["cache-write-dearest"]

    # 10k input at $3.75/M (cache write is dearest) + 1k output at $15/M
    assert max_cost(prices, max_input_tokens=10_000, max_output_tokens=1_000) == Decimal("0.0525")


def test_max_cost_adds_one_unit_only_when_per_token_rates_need_rounding():
    ties = PRICE_TABLE["half-unit-ties"]

    # 6 tokens at 5e-13 = 3e-12 exactly, but 3 + 3 split across two rates costs 4e-12.
    assert max_cost(ties, max_input_tokens=6, max_output_tokens=0) == Decimal("4E-12")
    assert max_cost(ties, max_input_tokens=0, max_output_tokens=0) == Decimal(0)


def test_max_cost_includes_images_and_the_request_price():
    prices = Prices(per_image=Decimal("0.04"), per_request=Decimal("0.001"))

    assert max_cost(prices, max_input_tokens=0, max_output_tokens=0, images=3) == Decimal("0.121")


# --- usd -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0.1,
        1.0,
        True,
        Decimal("NaN"),
        Decimal("sNaN"),
        "nan",
        Decimal("Infinity"),
        "-inf",
        "1e-13",
        Decimal("0.0000000000001"),
        "0.1234567890123",
        "abc",
        "",
        None,
        [],
    ],
)
def test_usd_refuses_floats_non_finite_and_too_many_places(value):
    with pytest.raises(MoneyError):
        usd(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.5", Decimal("1.5")),
        (2, Decimal(2)),
        ("-3.25", Decimal("-3.25")),
        (Decimal("0.000000000001"), COST_PLACES),
        ("0", Decimal(0)),
        # Trailing zeros are not precision: Decimal arithmetic on stored amounts produces them.
        (Decimal("1.5000000000000"), Decimal("1.5")),
        (Decimal("0.4558417311420"), Decimal("0.455841731142")),
        (Decimal("0E-20"), Decimal(0)),
    ],
)
def test_usd_accepts_decimals_ints_and_decimal_strings(value, expected):
    amount = usd(value)

    assert isinstance(amount, Decimal)
    assert amount == expected


# --- to_cents ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.125", "0.12"),  # tie -> even
        ("0.135", "0.14"),  # tie -> even
        ("0.145", "0.14"),
        ("-0.125", "-0.12"),
        ("0.1251", "0.13"),  # not a tie
        ("0.124999999999", "0.12"),
        ("2.5", "2.50"),
        ("0.00000002", "0.00"),
    ],
)
def test_to_cents_rounds_half_even(amount, expected):
    cents = to_cents(Decimal(amount))

    assert cents == Decimal(expected)
    assert cents.as_tuple().exponent == CENT.as_tuple().exponent
