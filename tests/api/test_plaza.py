"""The model plaza (issue 11, Deliver 3): the models an account's keys may use, their exact USD
prices, limits, the endpoints the gateway serves them on, and their status from the one
visibility rule (billing.selectors.model_visibility)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.models import ApiKey, CatalogModel, Membership, Route
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.factories import CatalogModelFactory, ProbeFactory, RouteFactory, make_visible_model

pytestmark = pytest.mark.django_db

CHAT_ENDPOINTS = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
IMAGE_ENDPOINTS = ["/v1/images/generations", "/v1/images/edits"]
EXACT = {
    "input_per_mtok": Decimal("1.2345678901"),
    "output_per_mtok": Decimal("10"),
    "cached_input_per_mtok": Decimal("0.0000000001"),
    "cache_write_per_mtok": Decimal("3.75"),
}


def priced(model: CatalogModel, prices: dict | None = None) -> CatalogModel:
    services.price_version_publish(
        model=model,
        prices=prices or {"input_per_mtok": Decimal("1")},
        effective_from=timezone.now() - timedelta(hours=1),
    )
    return model


def catalog() -> dict[str, CatalogModel]:
    """One model in each state the visibility rule knows."""
    return {
        "visible": make_visible_model(CatalogModelFactory(name="gpt-5"), prices=EXACT),
        "image": make_visible_model(
            CatalogModelFactory(name="gpt-image-2", kind="image", context_window=0, max_output_tokens=0),
            prices={"per_image": Decimal("0.04"), "per_request": Decimal("0.000001")},
        ),
        "no_price": _routed(CatalogModelFactory(name="no-price"), ok=True),
        "no_route": priced(CatalogModelFactory(name="no-route")),
        "probe_failing": _routed(priced(CatalogModelFactory(name="probe-failing")), ok=False),
        "disabled": make_visible_model(CatalogModelFactory(name="switched-off", enabled=False)),
    }


def _routed(model: CatalogModel, *, ok: bool) -> CatalogModel:
    ProbeFactory(route=RouteFactory(model=model), ok=ok)
    return model


def key(caller: Caller, models: list[str] | None = None, **kwargs) -> ApiKey:
    return services.key_create(account=caller.account, name="k", models=models, **kwargs)[0]


def listed(caller: Caller, query: str = "") -> dict[str, dict]:
    response = caller.client.get(caller.url("/models") + query)
    assert response.status_code == 200, response.content
    return {item["name"]: item for item in response.json()["results"]}


# --- what the plaza shows -----------------------------------------------------------------------


def test_every_model_of_an_all_models_key_with_its_status_from_the_one_rule(alice):
    models = catalog()
    all_models = key(alice)
    shown = listed(alice)
    assert list(shown) == sorted(model.name for model in models.values())  # by name, visible or not
    for name, item in shown.items():
        entry = selectors.model_entry(name)
        assert item["status"] == selectors.model_status(entry)  # the one rule, named
        assert item["visible"] is selectors.model_visibility(entry)[0]
        assert item["key_ids"] == [all_models.pk]
    assert {shown[model.name]["status"] for model in models.values()} == set(selectors.PLAZA_STATUSES)
    assert shown["no-price"]["status"] == "no_price" and shown["no-price"]["pricing"] is None
    assert shown["no-route"]["status"] == "no_route"
    assert shown["probe-failing"]["status"] == "probe_failing"
    assert shown["switched-off"]["status"] == "disabled"


def test_prices_are_exact_decimal_strings_with_limits_kind_and_endpoints(alice):
    catalog()
    key(alice)
    shown = listed(alice)
    gpt5 = shown["gpt-5"]
    assert gpt5 | {"pricing": None} == {
        "name": "gpt-5",
        "display_name": "gpt-5",
        "owned_by": "openai",
        "kind": "chat",
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "status": "visible",
        "visible": True,
        "endpoints": CHAT_ENDPOINTS,
        "pricing": None,
        "key_ids": gpt5["key_ids"],
    }
    pricing = gpt5["pricing"]
    assert pricing.pop("effective_from")
    assert pricing == {
        "currency": "USD",
        "input_per_mtok": "1.2345678901",
        "output_per_mtok": "10.0000000000",
        "cached_input_per_mtok": "0.0000000001",
        "cache_write_per_mtok": "3.7500000000",
        "per_image": "0.0000000000",
        "per_request": "0.0000000000",
    }
    assert all(Decimal(value) == EXACT.get(name, 0) for name, value in pricing.items() if name != "currency")
    image = shown["gpt-image-2"]
    assert (image["kind"], image["endpoints"]) == ("image", IMAGE_ENDPOINTS)
    assert (image["pricing"]["per_image"], image["pricing"]["per_request"]) == ("0.0400000000", "0.0000010000")
    # a model the gateway does not serve now is served on no endpoint
    assert shown["probe-failing"]["endpoints"] == [] and shown["no-route"]["endpoints"] == []


def test_the_current_price_version_is_shown_not_a_future_one(alice):
    model = make_visible_model(CatalogModelFactory(name="gpt-5"), prices={"input_per_mtok": Decimal("2")})
    services.price_version_publish(
        model=model, prices={"input_per_mtok": Decimal("3")}, effective_from=timezone.now() + timedelta(days=1)
    )
    key(alice)
    assert listed(alice)["gpt-5"]["pricing"]["input_per_mtok"] == "2.0000000000"


def test_an_anthropic_route_serves_the_same_endpoints_as_the_gateway_says(alice):
    make_visible_model(
        CatalogModelFactory(name="claude-sonnet-4-6", owned_by="anthropic"), provider=Route.Provider.ANTHROPIC
    )
    key(alice)
    assert listed(alice)["claude-sonnet-4-6"]["endpoints"] == CHAT_ENDPOINTS


@pytest.mark.django_db(transaction=True)
def test_endpoints_are_what_the_gateways_own_catalog_serves():
    from usage.gateway.endpoints.served import endpoints_served
    from usage.gateway.state import _load_catalog

    alice = Caller("alice")
    catalog()
    make_visible_model(CatalogModelFactory(name="claude-opus-4-7"), provider=Route.Provider.ANTHROPIC)
    make_visible_model(
        CatalogModelFactory(name="gemini-3-pro-image-preview", kind="image", context_window=0, max_output_tokens=0),
        provider=Route.Provider.GEMINI,
        prices={"per_image": Decimal("0.134")},
    )
    key(alice)
    shown = listed(alice)
    gateway = _load_catalog()
    assert set(shown) == set(gateway)
    for name, info in gateway.items():
        assert shown[name]["visible"] is info.visible
        assert shown[name]["endpoints"] == (endpoints_served(info) if info.visible else []), name


def test_the_scope_is_the_union_of_the_usable_keys(alice):
    catalog()
    narrow = key(alice, ["gpt-5", "no-route", "not-in-catalog"])
    other = key(alice, ["gpt-5", "gpt-image-2"])
    key(alice, ["probe-failing"], expires_at=timezone.now() - timedelta(seconds=1))  # expired: no scope
    services.key_disable(key=key(alice, ["switched-off"]))  # disabled: no scope
    shown = listed(alice)
    assert list(shown) == ["gpt-5", "gpt-image-2", "no-route"]
    assert shown["gpt-5"]["key_ids"] == [narrow.pk, other.pk]
    assert shown["gpt-image-2"]["key_ids"] == [other.pk]


def test_no_usable_key_no_models(alice):
    catalog()
    assert listed(alice) == {}
    services.key_disable(key=key(alice))
    assert listed(alice) == {}
    assert_error(alice.client.get(alice.url("/models/gpt-5")), 404, "not_found")


def test_one_model_and_a_404_outside_the_scope(alice):
    catalog()
    key(alice, ["gpt-5", "no-price"])
    response = alice.client.get(alice.url("/models/gpt-5"))
    assert response.status_code == 200
    assert response.json() == listed(alice)["gpt-5"]
    assert alice.client.get(alice.url("/models/no-price")).json()["status"] == "no_price"
    assert_error(alice.client.get(alice.url("/models/gpt-image-2")), 404, "not_found")  # outside the scope
    assert_error(alice.client.get(alice.url("/models/nope")), 404, "not_found")
    assert_error(alice.client.get(alice.url("/models/gpt-5?verbose=1")), 400, "invalid_request", {"verbose"})


def test_a_dotted_model_name_is_one_path_segment(alice):
    make_visible_model(CatalogModelFactory(name="gpt-5.4"))
    key(alice)
    assert alice.client.get(alice.url("/models/gpt-5.4")).json()["name"] == "gpt-5.4"


# --- filters and paging ---------------------------------------------------------------------------


def test_filters_by_kind_visible_status_and_endpoint(alice):
    catalog()
    key(alice)
    assert list(listed(alice, "?kind=image")) == ["gpt-image-2"]
    assert list(listed(alice, "?visible=true")) == ["gpt-5", "gpt-image-2"]
    assert list(listed(alice, "?visible=false")) == ["no-price", "no-route", "probe-failing", "switched-off"]
    assert list(listed(alice, "?status=probe_failing")) == ["probe-failing"]
    assert list(listed(alice, "?endpoint=/v1/messages")) == ["gpt-5"]
    assert list(listed(alice, "?endpoint=/v1/images/edits&kind=image&visible=true")) == ["gpt-image-2"]
    assert list(listed(alice, "?endpoint=/v1/images/edits&kind=chat")) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("kind=video", "kind"),
        ("visible=maybe", "visible"),
        ("status=hidden", "status"),
        ("endpoint=/v1/embeddings", "endpoint"),
        ("vendor=openai", "vendor"),
        ("page_size=0", "page_size"),
        ("page_size=201", "page_size"),
        ("cursor=garbage", "cursor"),
    ],
)
def test_bad_and_unknown_parameters_are_400s_naming_them(alice, query, field):
    catalog()
    key(alice)
    assert_error(alice.client.get(alice.url(f"/models?{query}")), 400, "invalid_request", {field})


def test_pages_follow_the_cursor_by_name(alice):
    for n in range(5):
        make_visible_model(CatalogModelFactory(name=f"m-{n}"))
    key(alice)
    names, url = [], alice.url("/models?page_size=2")
    while url:
        page = alice.client.get(url).json()
        names += [item["name"] for item in page["results"]]
        url = page["next"]
    assert names == [f"m-{n}" for n in range(5)]


def test_query_count_does_not_grow_with_models_or_keys(alice, django_assert_max_num_queries):
    catalog()
    key(alice)
    alice.client.get(alice.url("/models"))  # the token's last_used_at is written once
    with django_assert_max_num_queries(8) as few:
        assert len(listed(alice)) == 6
    for n in range(20):
        make_visible_model(CatalogModelFactory(name=f"m-{n:02}"))
        key(alice, [f"m-{n:02}"])
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(listed(alice)) == 26
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(listed(alice, "?visible=true&endpoint=/v1/chat/completions&kind=chat")) == 21
    with django_assert_max_num_queries(7):
        assert alice.client.get(alice.url("/models/gpt-5")).status_code == 200


# --- roles, isolation, secrets --------------------------------------------------------------------


def test_a_member_reads_the_plaza_too(alice):
    catalog()
    key(alice)
    member = Caller("mia", role=Membership.Role.MEMBER, account=alice.account)
    assert listed(member) == listed(alice)
    assert member.client.get(member.url("/models/gpt-5")).status_code == 200


def test_another_accounts_plaza_and_its_models_are_404(alice, bob):
    catalog()
    key(alice, ["gpt-5"])
    key(bob, ["gpt-image-2"])
    assert_error(alice.client.get(bob.url("/models")), 404, "not_found")
    assert_error(alice.client.get(bob.url("/models/gpt-image-2")), 404, "not_found")
    assert_error(alice.client.get(alice.url("/models/gpt-image-2")), 404, "not_found")  # bob's scope, not hers
    assert_error(alice.client.get("/api/v1/accounts/999999/models"), 404, "not_found")
    assert list(listed(bob)) == ["gpt-image-2"]


def test_no_response_carries_a_secret_or_a_hash(alice):
    catalog()
    secret_key, secret = services.key_create(account=alice.account, name="k")
    routes = list(Route.objects.all())
    bodies = [
        alice.client.get(alice.url("/models")).content.decode(),
        alice.client.get(alice.url("/models/gpt-5")).content.decode(),
    ]
    for body in bodies:
        assert "upstream-test-secret" not in body
        assert secret not in body and secret_key.key_hash not in body and alice.secret not in body
        assert all(route.secret_encrypted not in body for route in routes if route.secret_encrypted)
        assert "base_url" not in body and "127.0.0.1" not in body


def test_unauthenticated_is_401(db):
    from rest_framework.test import APIClient

    assert_error(APIClient().get("/api/v1/accounts/1/models"), 401, "not_authenticated")
