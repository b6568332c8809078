"""Reads: balances, key lookup and scope, current prices and the catalog visibility rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from billing import keys
from billing.models import ApiKey, CatalogModel, LedgerEntry, PriceSnapshot, PriceVersion, Probe, Route

# --- ledger --------------------------------------------------------------------------------------


def ledger_sum(*, account_id: int) -> Decimal:
    """The balance recomputed from the ledger; `Account.balance` must always equal it."""
    total = LedgerEntry.objects.filter(account_id=account_id).aggregate(total=Sum("amount"))["total"]
    return total or Decimal(0)


# --- keys ----------------------------------------------------------------------------------------


def key_lookup(secret: str) -> ApiKey | None:
    """The key for a presented secret, if it exists (whatever its status). One indexed lookup."""
    if not keys.key_well_formed(secret):
        return None
    return ApiKey.objects.select_related("account").filter(key_hash=keys.key_hash(secret)).first()


def key_is_usable(key: ApiKey, *, now: datetime | None = None) -> bool:
    """Active, not expired, and its account active."""
    now = now or timezone.now()
    return (
        key.status == ApiKey.Status.ACTIVE
        and (key.expires_at is None or key.expires_at > now)
        and key.account.status == key.account.Status.ACTIVE
    )


def key_allows_model(key: ApiKey, model_name: str) -> bool:
    return key.all_models or model_name in key.allowed_models


# --- catalog -------------------------------------------------------------------------------------


@dataclass
class RouteEntry:
    route: Route
    latest_probe: Probe | None

    @property
    def usable(self) -> bool:
        return self.route.active and self.latest_probe is not None and self.latest_probe.ok


@dataclass
class ModelEntry:
    """A model with what decides its visibility: routes (with their latest probe) and current price."""

    model: CatalogModel
    routes: list[RouteEntry] = field(default_factory=list)
    price: PriceVersion | None = None

    @property
    def visible(self) -> bool:
        return model_visibility(self)[0]

    @property
    def usable_routes(self) -> list[Route]:
        return [entry.route for entry in self.routes if entry.usable]


def model_visibility(entry: ModelEntry) -> tuple[bool, str]:
    """CONTRACT §4, the one definition: a model is customer-visible only when it is enabled, has an
    active route whose latest probe is OK, and has an active (effective) price.

    Returns (visible, reason) — the reason is shown to operators in the admin.
    """
    if not entry.model.enabled:
        return False, "disabled by an operator"
    if entry.price is None:
        return False, "no active price"
    if not any(route.route.active for route in entry.routes):
        return False, "no active route"
    if not any(route.usable for route in entry.routes):
        return False, "no active route with an OK latest probe"
    return True, "visible"


def catalog_entries(*, now: datetime | None = None, names: list[str] | None = None) -> list[ModelEntry]:
    """Every catalog model with its routes, their latest probes and its current price (4 queries)."""
    now = now or timezone.now()
    models = CatalogModel.objects.order_by("name")
    if names is not None:
        models = models.filter(name__in=names)
    entries = {model.pk: ModelEntry(model=model) for model in models}
    routes = list(Route.objects.filter(model_id__in=entries).order_by("priority", "id"))
    latest_probes = {
        probe.route_id: probe
        for probe in Probe.objects.filter(route__in=routes)
        .order_by("route_id", "-checked_at", "-id")
        .distinct("route_id")
    }
    for route in routes:
        route.model = entries[route.model_id].model
        entries[route.model_id].routes.append(RouteEntry(route=route, latest_probe=latest_probes.get(route.pk)))
    for price in (
        PriceVersion.objects.filter(model_id__in=entries, effective_from__lte=now)
        .order_by("model_id", "-effective_from")
        .distinct("model_id")
    ):
        price.model = entries[price.model_id].model
        entries[price.model_id].price = price
    return list(entries.values())


def model_entry(name: str, *, now: datetime | None = None) -> ModelEntry | None:
    found = catalog_entries(now=now, names=[name])
    return found[0] if found else None


def model_visible_list(*, key: ApiKey | None = None, now: datetime | None = None) -> list[CatalogModel]:
    """Customer-visible models, restricted to a key's scope when a key is given."""
    return [
        entry.model
        for entry in catalog_entries(now=now)
        if entry.visible and (key is None or key_allows_model(key, entry.model.name))
    ]


def price_current(model: CatalogModel, *, now: datetime | None = None) -> PriceVersion | None:
    return (
        PriceVersion.objects.filter(model=model, effective_from__lte=now or timezone.now())
        .order_by("-effective_from")
        .first()
    )


def price_snapshot_current(model: CatalogModel, *, now: datetime | None = None) -> PriceSnapshot | None:
    """The snapshot a request starting now freezes (the current version's, de-duplicated)."""
    from billing.services import price_snapshot_for  # a get-or-create of an immutable row

    version = price_current(model, now=now)
    return None if version is None else price_snapshot_for(version)


# --- the model plaza (dashboard API) -------------------------------------------------------------

# model_visibility's reasons as the plaza's stable status codes. Only a naming of its answers,
# never a second copy of the rule: a reason added there without a code here fails loudly (KeyError,
# and tests/api/test_plaza.py walks every branch).
VISIBILITY_STATUS = {
    "visible": "visible",
    "disabled by an operator": "disabled",
    "no active price": "no_price",
    "no active route": "no_route",
    "no active route with an OK latest probe": "probe_failing",
}
PLAZA_STATUSES = ("visible", "no_route", "no_price", "probe_failing", "disabled")


def model_status(entry: ModelEntry) -> str:
    """`visible`, or why not (`disabled`, `no_price`, `no_route`, `probe_failing`)."""
    return VISIBILITY_STATUS[model_visibility(entry)[1]]


@dataclass
class PlazaEntry:
    """A catalog model as one account sees it: its entry, its status and the keys that may call it."""

    entry: ModelEntry
    status: str
    key_ids: list[int]


def account_keys_usable(*, account, now: datetime | None = None) -> list[ApiKey]:
    """The account's keys that would be accepted now (key_is_usable), oldest first (1 query)."""
    now = now or timezone.now()
    found = list(ApiKey.objects.filter(account=account, status=ApiKey.Status.ACTIVE).order_by("id"))
    for key in found:
        key.account = account  # no query per key for key_is_usable's account check
    return [key for key in found if key_is_usable(key, now=now)]


def plaza_entries(*, account, now: datetime | None = None, name: str | None = None) -> list[PlazaEntry]:
    """Every catalog model some usable key of `account` may call (the union of their scopes; every
    model when one key has all_models), visible or not, with its status from model_visibility and
    the ids of the keys that may call it; `name`: that model only. 5 queries, however many models."""
    now = now or timezone.now()
    usable = account_keys_usable(account=account, now=now)
    if not usable:
        return []
    names: list[str] | None = None
    if not any(key.all_models for key in usable):
        names = sorted({model for key in usable for model in key.allowed_models})
    if name is not None:
        names = [name] if names is None or name in names else []
    if names == []:
        return []
    return [
        PlazaEntry(
            entry=entry,
            status=model_status(entry),
            key_ids=[key.pk for key in usable if key_allows_model(key, entry.model.name)],
        )
        for entry in catalog_entries(now=now, names=names)
    ]


# --- balance and ledger (dashboard API) ----------------------------------------------------------


def ledger_entries(*, account_id: int):
    """An account's ledger entries with their holds (one query a page; ledger_account_time)."""
    return LedgerEntry.objects.filter(account_id=account_id).select_related("hold")
