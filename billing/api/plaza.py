"""The model plaza: GET /api/v1/accounts/{account_id}/models[/{name}].

Every catalog model the account's usable keys may call, with its current prices, limits, the
endpoints the gateway serves it on and its status — `visible`, or why not — from the one
visibility rule (billing.selectors.model_visibility, via plaza_entries). A model outside every key's
scope is a 404, as an unknown one is.
"""

from __future__ import annotations

from dataclasses import dataclass

import django_filters
from django.db.models import QuerySet
from django.urls import path
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics

from billing.api.plaza_serializers import ENDPOINTS, PlazaModelSerializer
from billing.models import CatalogModel, PriceVersion
from billing.selectors import PLAZA_STATUSES, PlazaEntry, plaza_entries
from openbili.api.pagination import Cursor
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped
from usage.gateway.endpoints.served import endpoints_served
from usage.gateway.state import ModelInfo, RouteInfo


@dataclass(frozen=True)
class PlazaModel:
    name: str
    display_name: str
    owned_by: str
    kind: str
    context_window: int
    max_output_tokens: int
    status: str
    visible: bool
    endpoints: list[str]
    pricing: PriceVersion | None
    key_ids: list[int]


def _endpoints(row: PlazaEntry) -> list[str]:
    """The gateway's answer (endpoints_served) over the routes it would use: the usable ones, as
    usage/gateway/state.py builds them — without their secrets, which deciding needs not."""
    if row.status != "visible":
        return []  # the gateway answers 404 model_not_ready on every endpoint
    model = row.entry.model
    routes = tuple(
        RouteInfo(route.pk, route.provider, route.base_url, route.upstream_model, "", float(route.timeout_seconds))
        for route in row.entry.usable_routes
    )
    info = ModelInfo(
        name=model.name,
        kind=model.kind,
        owned_by=model.owned_by,
        created=int(model.created_at.timestamp()),
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        visible=True,
        routes=routes,
        prices=(),
    )
    return endpoints_served(info)


def plaza_model(row: PlazaEntry) -> PlazaModel:
    model = row.entry.model
    return PlazaModel(
        name=model.name,
        display_name=model.display_name or model.name,
        owned_by=model.owned_by or "openbili",
        kind=model.kind,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        status=row.status,
        visible=row.status == "visible",
        endpoints=_endpoints(row),
        pricing=row.entry.price,
        key_ids=row.key_ids,
    )


def _choices(values) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


class PlazaFilter(django_filters.FilterSet):
    """Filters over what the plaza computed for this account (`rows`, by model id)."""

    kind = django_filters.ChoiceFilter(choices=CatalogModel.Kind.choices)
    visible = django_filters.ChoiceFilter(
        choices=_choices(("true", "false")), method="filter_visible", help_text="true or false."
    )
    status = django_filters.ChoiceFilter(choices=_choices(PLAZA_STATUSES), method="filter_status")
    endpoint = django_filters.ChoiceFilter(
        choices=_choices(ENDPOINTS), method="filter_endpoint", help_text="Models served on this path."
    )

    class Meta:
        model = CatalogModel
        fields = ("kind",)

    def __init__(self, *args, rows: dict[int, PlazaModel] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows = rows or {}

    def _only(self, queryset: QuerySet, keep) -> QuerySet:
        return queryset.filter(pk__in=[pk for pk, row in self.rows.items() if keep(row)])

    def filter_visible(self, queryset, name, value):
        return self._only(queryset, lambda row: row.visible == (value == "true"))

    def filter_status(self, queryset, name, value):
        return self._only(queryset, lambda row: row.status == value)

    def filter_endpoint(self, queryset, name, value):
        return self._only(queryset, lambda row: value in row.endpoints)


class PlazaFilterBackend(DjangoFilterBackend):
    def get_filterset_kwargs(self, request, queryset, view):
        return super().get_filterset_kwargs(request, queryset, view) | {"rows": view.rows}


class ByName(Cursor):
    ordering = ("name", "id")  # names are unique: the id only completes the ordering


KNOWN = frozenset(PlazaFilter.base_filters)


@extend_schema(tags=["models"])
class ModelListView(AccountScoped, generics.ListAPIView):
    """The models this account's keys may call (visible or not, and why), by name."""

    serializer_class = PlazaModelSerializer
    filterset_class = PlazaFilter
    filter_backends = [PlazaFilterBackend]
    pagination_class = ByName
    queryset = CatalogModel.objects.none()  # the schema's model; get_queryset() answers

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CatalogModel.objects.none()
        check_known(self.request, KNOWN)
        self.rows = {row.entry.model.pk: plaza_model(row) for row in plaza_entries(account=self.account)}
        return CatalogModel.objects.filter(pk__in=list(self.rows))

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        data = self.get_serializer([self.rows[model.pk] for model in page], many=True).data
        return self.get_paginated_response(data)


@extend_schema(tags=["models"])
class ModelView(AccountScoped, generics.RetrieveAPIView):
    """One model of the plaza; 404 when it is unknown or outside every usable key's scope."""

    serializer_class = PlazaModelSerializer
    queryset = CatalogModel.objects.none()
    lookup_field = "name"

    def get_object(self):
        check_known(self.request, set())
        found = plaza_entries(account=self.account, name=self.kwargs["name"])
        if not found:
            raise exceptions.NotFound("No such model for this account's keys.")
        return plaza_model(found[0])


urlpatterns = [
    path("models", ModelListView.as_view(), name="api-models"),
    path("models/<str:name>", ModelView.as_view(), name="api-model"),
]
