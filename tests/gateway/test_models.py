"""GET /v1/models and /v1/models/{id}: only customer-visible models inside the key's scope (CONTRACT §2, §4)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing import services
from billing.models import CatalogModel
from tests.factories import CatalogModelFactory, ProbeFactory, RouteFactory, make_visible_model
from tests.gateway.support import (
    assert_error_body,
    assert_ids,
    assert_no_row,
    assert_outcome,
    assert_sdk_error,
    rejected,
)
from tests.gateway_fixtures import CLAUDE


@pytest.fixture
def catalog(gateway):
    """gpt-5 (visible, from the fixture), gpt-4.1 (visible) and three hidden models, one per §4 reason."""
    make_visible_model(CatalogModelFactory(name="gpt-4.1"), base_url=gateway.upstream.url + "/v1")
    failing = make_visible_model(CatalogModelFactory(name="hidden-probe-failed"), base_url=gateway.upstream.url)
    ProbeFactory(route=failing.routes.get(), ok=False)  # the latest probe decides
    unpriced = CatalogModelFactory(name="hidden-no-price")
    services.probe_record(route=RouteFactory(model=unpriced), ok=True)
    disabled = make_visible_model(CatalogModelFactory(name="hidden-disabled"), base_url=gateway.upstream.url)
    CatalogModel.objects.filter(pk=disabled.pk).update(enabled=False)
    gateway.refresh()
    return gateway


HIDDEN = ["hidden-probe-failed", "hidden-no-price", "hidden-disabled"]


def test_list_shows_only_visible_models(catalog):
    # given visible and hidden models; when the customer lists models with the SDK
    raw = catalog.openai().models.with_raw_response.list()
    page = raw.parse()
    # then only the visible ones, in the OpenAI list shape
    assert sorted(model.id for model in page.data) == ["gpt-4.1", "gpt-5"]
    gpt5 = next(model for model in page.data if model.id == "gpt-5")
    assert (gpt5.object, gpt5.owned_by) == ("model", "openai")
    assert isinstance(gpt5.created, int) and gpt5.created > 0
    request_id, _ = assert_ids(raw.headers)
    assert_outcome(catalog, request_id, billing_result="not_billed", status=200, cost=0)


def test_list_is_restricted_to_the_key_scope(catalog):
    # given a key scoped to gpt-4.1 and a hidden model
    _, secret = services.key_create(account=catalog.account, name="scoped", models=["gpt-4.1", "hidden-disabled"])
    # when it lists models
    page = catalog.openai(secret).models.list()
    # then only the visible models of its scope
    assert [model.id for model in page.data] == ["gpt-4.1"]


def test_retrieve_visible_model(catalog):
    raw = catalog.openai().models.with_raw_response.retrieve("gpt-5")
    model = raw.parse()
    assert (model.id, model.object, model.owned_by) == ("gpt-5", "model", "openai")
    request_id, _ = assert_ids(raw.headers)
    assert_outcome(catalog, request_id, billing_result="not_billed", status=200, cost=0)


@pytest.mark.parametrize("name", [*HIDDEN, "no-such-model"])
def test_retrieve_invisible_model_is_not_found(catalog, name):
    with pytest.raises(openai.NotFoundError) as caught:
        catalog.openai().models.retrieve(name)
    request_id = assert_sdk_error(caught.value, status=404, code="model_not_found", param="model")
    assert_outcome(
        catalog,
        request_id,
        billing_result="not_billed",
        status=404,
        cost=0,
        error_class="model_unavailable",
        error_code="model_not_found",
    )


def test_retrieve_out_of_scope_model_is_not_found(catalog):
    # given a key scoped to gpt-4.1: gpt-5 exists and is visible, but not for this key
    _, secret = services.key_create(account=catalog.account, name="scoped", models=["gpt-4.1"])
    with pytest.raises(openai.NotFoundError) as caught:
        catalog.openai(secret).models.retrieve("gpt-5")
    assert_sdk_error(caught.value, status=404, code="model_not_found", param="model")
    assert catalog.openai(secret).models.retrieve("gpt-4.1").id == "gpt-4.1"


def test_models_need_a_valid_key(catalog):
    with pytest.raises(openai.AuthenticationError) as caught:
        catalog.openai("sk-ob-" + "x" * 43).models.list()
    request_id = assert_sdk_error(caught.value, status=401, code="invalid_api_key")
    assert_no_row(request_id)


def test_retrieve_with_a_nul_in_the_id_is_a_404_with_its_row(catalog):
    response = catalog.get("/v1/models/gpt-5%00")
    request_id = assert_error_body(response, status=404, code="model_not_found", param="model")
    assert_outcome(
        catalog,
        request_id,
        billing_result="not_billed",
        status=404,
        cost=0,
        error_class="model_unavailable",
        error_code="model_not_found",
    )


def test_retrieve_with_a_very_long_id_is_a_404_with_its_row(catalog):
    response = catalog.get("/v1/models/" + "x" * 3000)
    request_id = assert_error_body(response, status=404, code="model_not_found", param="model")
    row = assert_outcome(
        catalog,
        request_id,
        billing_result="not_billed",
        status=404,
        cost=0,
        error_class="model_unavailable",
        error_code="model_not_found",
    )
    assert len(row.endpoint) == 64 and len(row.model_requested) == 100


# --- which model serves which endpoint (issue 10, Deliver 4) --------------------------------------


def test_the_list_says_what_each_model_serves_costs_and_holds(claude):
    # given gpt-5 on an OpenAI route (fixture prices), Claude on an Anthropic route, an image model
    make_visible_model(
        CatalogModelFactory(name="gpt-image-2", kind="image", owned_by="openai", context_window=0, max_output_tokens=0),
        base_url=claude.upstream.url + "/v1",
        prices={"per_image": Decimal("0.04")},
    )
    claude.refresh()
    # when the customer lists models with the SDK
    page = claude.openai().models.list()
    models = {model.id: model.model_extra for model in page.data}
    # then each carries its entry points, limits, modalities and exact USD prices, beside OpenAI's fields
    gpt5 = models["gpt-5"]
    assert gpt5["endpoints"] == ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
    assert (gpt5["context_window"], gpt5["max_output_tokens"]) == (400_000, 128_000)
    assert (gpt5["input_modalities"], gpt5["output_modalities"]) == (["text", "image"], ["text"])
    assert gpt5["pricing"] == {
        "currency": "USD",
        "input_per_mtok": "1.25",
        "cached_input_per_mtok": "0.125",
        "cache_write_per_mtok": "0",
        "output_per_mtok": "10",
        "per_image": "0",
        "per_request": "0",
    }
    assert models[CLAUDE]["endpoints"] == gpt5["endpoints"]  # Messages passes through, chat and Responses translated
    assert models[CLAUDE]["pricing"]["cache_write_per_mtok"] == "3.75"
    image = models["gpt-image-2"]
    assert (image["kind"], image["output_modalities"]) == ("image", ["image"])
    assert image["endpoints"] == ["/v1/images/generations", "/v1/images/edits"]  # not chat: its route cannot
    assert image["pricing"]["per_image"] == "0.04"
    # and the one-model call says the same
    assert claude.openai().models.retrieve(CLAUDE).model_extra["endpoints"] == gpt5["endpoints"]


def test_a_model_on_an_endpoint_it_does_not_serve_is_a_400_with_its_row(gateway):
    make_visible_model(
        CatalogModelFactory(name="gpt-image-2", kind="image", context_window=0, max_output_tokens=0),
        base_url=gateway.upstream.url + "/v1",
        prices={"per_image": Decimal("0.04")},
    )
    gateway.refresh()
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai().chat.completions.create(model="gpt-image-2", messages=[{"role": "user", "content": "Hi"}])
    request_id = assert_sdk_error(caught.value, status=400, code="model_not_supported_for_endpoint", param="model")
    assert "/v1/chat/completions" in caught.value.message
    rejected(gateway, request_id, 400, "invalid_request", "model_not_supported_for_endpoint")
    assert not gateway.upstream.requests  # nothing was sent, nothing held
