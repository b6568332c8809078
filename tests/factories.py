"""factory_boy factories. Money-moving data goes through the services, never raw inserts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from billing import services
from billing.models import Account, CatalogModel, Route


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")


class AccountFactory(factory.django.DjangoModelFactory):
    """`AccountFactory(credit=Decimal("10"))` creates the account with an opening top-up entry."""

    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"Account {n}")

    @classmethod
    def _create(cls, model_class, *args, credit=Decimal(0), **kwargs):
        return services.account_create(credit=credit, **kwargs)


class CatalogModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CatalogModel
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"model-{n}")
    kind = CatalogModel.Kind.CHAT
    owned_by = "openai"
    context_window = 128_000
    max_output_tokens = 16_384


class RouteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Route

    model = factory.SubFactory(CatalogModelFactory)
    name = factory.Sequence(lambda n: f"route-{n}")
    provider = Route.Provider.OPENAI
    base_url = "http://127.0.0.1:9/v1"
    upstream_model = factory.LazyAttribute(lambda o: o.model.name)


DEFAULT_PRICES = {
    "input_per_mtok": Decimal("1.25"),
    "output_per_mtok": Decimal("10"),
    "cached_input_per_mtok": Decimal("0.125"),
}


def make_visible_model(
    model: CatalogModel,
    *,
    prices: dict | None = None,
    base_url: str | None = None,
    provider: str = Route.Provider.OPENAI,
    upstream_model: str | None = None,
):
    """Give a model what CONTRACT §4 requires to be visible: an active route, an OK probe, a price."""
    route = RouteFactory(
        model=model,
        base_url=base_url or "http://127.0.0.1:9/v1",
        provider=provider,
        upstream_model=upstream_model or model.name,
    )
    services.route_secret_set(route=route, secret="upstream-test-secret")
    services.probe_record(route=route, ok=True, status_code=200, latency_ms=1)
    services.price_version_publish(
        model=model, prices=prices or DEFAULT_PRICES, effective_from=timezone.now() - timedelta(seconds=1)
    )
    return model


class ProbeFactory(factory.django.DjangoModelFactory):
    """A probe with an explicit `checked_at`, so tests can order probes of a route deterministically."""

    class Meta:
        model = "billing.Probe"

    route = factory.SubFactory(RouteFactory)
    ok = True
    status_code = factory.LazyAttribute(lambda o: 200 if o.ok else 503)
    latency_ms = 1
    checked_at = factory.LazyFunction(timezone.now)
