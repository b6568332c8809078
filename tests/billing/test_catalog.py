"""The model plaza (CONTRACT §4): visibility rule, price versions and snapshots, route secrets."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.models import CatalogModel, PriceSnapshot, PriceVersion, Route
from openbili.core.errors import InvalidRequest
from tests.factories import (
    DEFAULT_PRICES,
    AccountFactory,
    CatalogModelFactory,
    ProbeFactory,
    RouteFactory,
    make_visible_model,
)

pytestmark = pytest.mark.django_db

PRICES = {"input_per_mtok": Decimal("1.25"), "output_per_mtok": Decimal("10")}


def ago(**kwargs):
    return timezone.now() - timedelta(**kwargs)


def priced(model: CatalogModel, prices: dict | None = None, **kwargs) -> PriceVersion:
    kwargs.setdefault("effective_from", ago(hours=1))
    return services.price_version_publish(model=model, prices=prices or PRICES, **kwargs)[0]


def visibility(model: CatalogModel, **kwargs) -> tuple[bool, str]:
    return selectors.model_visibility(selectors.model_entry(model.name, **kwargs))


# --- visibility ----------------------------------------------------------------------------------


def test_a_model_with_an_active_route_an_ok_probe_and_a_price_is_visible():
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))

    assert visibility(model) == (True, "visible")
    assert selectors.model_entry("gpt-5").visible is True


def test_a_disabled_model_is_hidden():
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))
    CatalogModel.objects.filter(pk=model.pk).update(enabled=False)

    assert visibility(model) == (False, "disabled by an operator")
    assert selectors.model_visible_list() == []


def test_a_model_without_a_price_is_hidden():
    model = CatalogModelFactory(name="gpt-5")
    ProbeFactory(route=RouteFactory(model=model), ok=True)

    assert visibility(model) == (False, "no active price")


def test_a_price_that_starts_in_the_future_does_not_apply_yet():
    model = CatalogModelFactory(name="gpt-5")
    ProbeFactory(route=RouteFactory(model=model), ok=True)
    starts = timezone.now() + timedelta(hours=1)
    priced(model, effective_from=starts)

    assert visibility(model) == (False, "no active price")
    assert visibility(model, now=starts) == (True, "visible")


def test_a_model_without_routes_is_hidden():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)

    assert visibility(model) == (False, "no active route")


def test_a_model_whose_only_route_is_inactive_is_hidden_even_with_an_ok_probe():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    ProbeFactory(route=RouteFactory(model=model, active=False), ok=True)

    assert visibility(model) == (False, "no active route")


def test_an_active_route_never_probed_does_not_make_a_model_visible():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    RouteFactory(model=model)

    assert visibility(model) == (False, "no active route with an OK latest probe")


def test_a_failed_latest_probe_hides_the_model_even_after_an_older_ok_probe():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    route = RouteFactory(model=model)
    ProbeFactory(route=route, ok=True, checked_at=ago(minutes=2))
    ProbeFactory(route=route, ok=False, checked_at=ago(minutes=1))

    assert visibility(model) == (False, "no active route with an OK latest probe")


def test_an_ok_latest_probe_after_a_failure_makes_the_model_visible_again():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    route = RouteFactory(model=model)
    ProbeFactory(route=route, ok=False, checked_at=ago(minutes=2))
    ProbeFactory(route=route, ok=True, checked_at=ago(minutes=1))

    assert visibility(model) == (True, "visible")


def test_the_latest_probe_is_decided_by_checked_at_not_by_insertion_order():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    route = RouteFactory(model=model)
    ProbeFactory(route=route, ok=False, checked_at=ago(minutes=1))
    ProbeFactory(route=route, ok=True, checked_at=ago(minutes=5))  # recorded later, but older

    assert visibility(model) == (False, "no active route with an OK latest probe")


def test_one_of_two_routes_with_an_ok_latest_probe_is_enough():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    failing = RouteFactory(model=model, name="primary", priority=1)
    healthy = RouteFactory(model=model, name="backup", priority=2)
    ProbeFactory(route=failing, ok=True, checked_at=ago(minutes=2))
    ProbeFactory(route=failing, ok=False, checked_at=ago(minutes=1))
    ProbeFactory(route=healthy, ok=True, checked_at=ago(minutes=3))

    entry = selectors.model_entry("gpt-5")

    assert selectors.model_visibility(entry) == (True, "visible")
    assert [route.pk for route in entry.usable_routes] == [healthy.pk]


def test_an_inactive_route_with_an_ok_probe_does_not_rescue_an_active_failing_one():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    ProbeFactory(route=RouteFactory(model=model, name="on"), ok=False)
    ProbeFactory(route=RouteFactory(model=model, name="off", active=False), ok=True)

    assert visibility(model) == (False, "no active route with an OK latest probe")


def test_model_visible_list_filters_by_the_key_scope():
    for name in ("gpt-5", "gpt-4.1", "claude-opus-4-7"):
        make_visible_model(CatalogModelFactory(name=name))
    CatalogModelFactory(name="gpt-image-2")  # in the scope below, but not visible
    account = AccountFactory()
    scoped, _ = services.key_create(account=account, name="scoped", models=["gpt-5", "gpt-image-2", "unknown"])
    everything, _ = services.key_create(account=account, name="all")

    assert [m.name for m in selectors.model_visible_list()] == ["claude-opus-4-7", "gpt-4.1", "gpt-5"]
    assert [m.name for m in selectors.model_visible_list(key=everything)] == ["claude-opus-4-7", "gpt-4.1", "gpt-5"]
    assert [m.name for m in selectors.model_visible_list(key=scoped)] == ["gpt-5"]


def test_model_entry_of_an_unknown_model_is_none():
    assert selectors.model_entry("no-such-model") is None


def test_catalog_entries_uses_a_bounded_number_of_queries(django_assert_max_num_queries):
    make_visible_model(CatalogModelFactory(name="model-a"))
    with django_assert_max_num_queries(4):
        assert len(selectors.catalog_entries()) == 1

    for n in range(12):
        model = make_visible_model(CatalogModelFactory(name=f"model-{n:02d}"))
        second = RouteFactory(model=model)
        ProbeFactory(route=second, ok=False, checked_at=ago(minutes=2))
        ProbeFactory(route=second, ok=True, checked_at=ago(minutes=1))
        priced(model, {"input_per_mtok": Decimal(n + 1)}, effective_from=ago(minutes=30))

    with django_assert_max_num_queries(4):
        entries = selectors.catalog_entries()
        # everything the visibility rule reads is already loaded
        assert sum(entry.visible for entry in entries) == 13
        assert all(route.route.model.name for entry in entries for route in entry.routes)
    assert len(entries) == 13


# --- price versions and snapshots ----------------------------------------------------------------


def test_publishing_identical_prices_changes_nothing():
    model = CatalogModelFactory(name="gpt-5")
    first, created = services.price_version_publish(model=model, prices=PRICES)

    again, created_again = services.price_version_publish(
        model=model, prices={"input_per_mtok": "1.2500", "output_per_mtok": 10, "per_image": "0"}
    )

    assert created is True
    assert (again.pk, created_again) == (first.pk, False)
    assert PriceVersion.objects.filter(model=model).count() == 1
    assert PriceSnapshot.objects.count() == 1


def test_changed_prices_publish_a_new_version_and_snapshot():
    model = CatalogModelFactory(name="gpt-5")
    first = priced(model, effective_from=ago(hours=2))

    second, created = services.price_version_publish(model=model, prices=PRICES | {"output_per_mtok": "12"})

    assert created is True
    assert second.pk != first.pk
    assert second.output_per_mtok == Decimal("12")
    first.refresh_from_db()
    assert first.output_per_mtok == Decimal("10")  # the old version is untouched
    assert PriceSnapshot.objects.count() == 2
    assert selectors.price_current(model).pk == second.pk


def test_changing_back_creates_a_version_but_reuses_the_original_snapshot():
    model = CatalogModelFactory(name="gpt-5")
    original = priced(model, effective_from=ago(hours=3))
    priced(model, PRICES | {"input_per_mtok": "2"}, effective_from=ago(hours=2))
    original_snapshot = services.price_snapshot_for(original)

    back, created = services.price_version_publish(model=model, prices=PRICES, effective_from=ago(hours=1))

    assert created is True
    assert PriceVersion.objects.filter(model=model).count() == 3
    assert PriceSnapshot.objects.count() == 2
    snapshot = services.price_snapshot_for(back)
    assert (snapshot.pk, snapshot.digest) == (original_snapshot.pk, original_snapshot.digest)
    assert selectors.price_snapshot_current(model).pk == original_snapshot.pk


def test_a_versions_snapshot_has_the_versions_prices():
    model = CatalogModelFactory(name="gpt-5")
    version = priced(
        model,
        {
            "input_per_mtok": "1.2345678901",
            "output_per_mtok": "10",
            "cached_input_per_mtok": "0.125",
            "cache_write_per_mtok": "1.5625",
            "per_image": "0.04",
            "per_request": "0.001",
        },
    )

    snapshot = services.price_snapshot_for(version)

    assert snapshot.prices() == version.prices()
    assert snapshot.price_version_id == version.pk
    assert (snapshot.model_name, snapshot.currency) == ("gpt-5", "USD")
    assert snapshot.as_dict() == {
        "id": snapshot.pk,
        "model": "gpt-5",
        "currency": "USD",
        "input_per_mtok": "1.2345678901",
        "output_per_mtok": "10.0000000000",
        "cached_input_per_mtok": "0.1250000000",
        "cache_write_per_mtok": "1.5625000000",
        "per_image": "0.0400000000",
        "per_request": "0.0010000000",
    }


def test_two_models_with_equal_prices_have_distinct_snapshots():
    first = services.price_snapshot_for(priced(CatalogModelFactory(name="gpt-5")))
    second = services.price_snapshot_for(priced(CatalogModelFactory(name="gpt-5.4")))

    assert first.pk != second.pk
    assert (first.model_name, second.model_name) == ("gpt-5", "gpt-5.4")


def test_the_current_snapshot_is_the_version_in_effect_now_not_a_future_one():
    model = CatalogModelFactory(name="gpt-5")
    now = timezone.now()
    current = priced(model, effective_from=now - timedelta(hours=1))
    future = priced(model, PRICES | {"input_per_mtok": "3"}, effective_from=now + timedelta(hours=1))

    assert selectors.price_snapshot_current(model, now=now).input_per_mtok == Decimal("1.25")
    assert selectors.price_snapshot_current(model, now=now).pk == services.price_snapshot_for(current).pk
    later = selectors.price_snapshot_current(model, now=now + timedelta(hours=1))
    assert (later.input_per_mtok, later.price_version_id) == (Decimal("3"), future.pk)


def test_the_current_snapshot_of_an_unpriced_model_is_none():
    model = CatalogModelFactory(name="gpt-5")
    priced(model, effective_from=timezone.now() + timedelta(days=1))

    assert selectors.price_snapshot_current(model) is None


def test_the_current_snapshot_is_read_without_creating_rows():
    model = CatalogModelFactory(name="gpt-5")
    priced(model)
    count = PriceSnapshot.objects.count()

    assert selectors.price_snapshot_current(model).pk == selectors.price_snapshot_current(model).pk
    assert PriceSnapshot.objects.count() == count == 1


@pytest.mark.parametrize(
    "prices",
    [
        {"input_per_mtok": "-1"},
        {"input_per_mtok": 1.25},  # float
        {"input_per_mtok": "1", "discount": "0.5"},  # unknown field
    ],
)
def test_invalid_prices_publish_nothing(prices):
    model = CatalogModelFactory(name="gpt-5")

    with pytest.raises((InvalidRequest, ValueError)):
        services.price_version_publish(model=model, prices=prices)

    assert not PriceVersion.objects.exists()
    assert not PriceSnapshot.objects.exists()


def test_default_prices_of_the_factory_are_what_the_snapshot_freezes(visible_model):
    snapshot = selectors.price_snapshot_current(visible_model)

    assert snapshot.input_per_mtok == DEFAULT_PRICES["input_per_mtok"]
    assert snapshot.output_per_mtok == DEFAULT_PRICES["output_per_mtok"]
    assert snapshot.cached_input_per_mtok == DEFAULT_PRICES["cached_input_per_mtok"]


# --- route secrets -------------------------------------------------------------------------------

UPSTREAM_SECRET = "sk-proj-upstream-Abc123-very-secret"


def test_route_secret_is_stored_encrypted_and_read_back():
    route = RouteFactory()

    services.route_secret_set(route=route, secret=UPSTREAM_SECRET)

    stored = Route.objects.values_list("secret_encrypted", flat=True).get(pk=route.pk)
    assert stored
    assert UPSTREAM_SECRET not in stored
    assert "very-secret" not in stored
    assert services.route_secret(Route.objects.get(pk=route.pk)) == UPSTREAM_SECRET


def test_route_secret_can_be_cleared():
    route = RouteFactory()
    services.route_secret_set(route=route, secret=UPSTREAM_SECRET)

    services.route_secret_set(route=route, secret="")

    route = Route.objects.get(pk=route.pk)
    assert route.secret_encrypted == ""
    assert services.route_secret(route) == ""


def test_route_secret_env_reads_the_environment_variable_first(monkeypatch):
    route = RouteFactory(secret_env="OPENBILI_TEST_UPSTREAM_KEY")
    services.route_secret_set(route=route, secret="stored-but-overridden")
    monkeypatch.setenv("OPENBILI_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)

    assert services.route_secret(Route.objects.get(pk=route.pk)) == UPSTREAM_SECRET


def test_route_secret_env_that_is_unset_gives_an_empty_secret(monkeypatch):
    monkeypatch.delenv("OPENBILI_TEST_UPSTREAM_KEY", raising=False)
    route = RouteFactory(secret_env="OPENBILI_TEST_UPSTREAM_KEY")

    assert services.route_secret(route) == ""
