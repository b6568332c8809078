"""The usage page: the account's usage rows, newest first, filterable, one by request_id.

A page is one index range scan (usage_account_time, or usage_account_model_time /
usage_key_time / usage_account_error_time when filtered by model, key or error) plus one query
for the names of the routes its rows mention and one for the tickets already opened on them.
"""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.response import Response

from openbili.api.pagination import Cursor
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped
from tickets import selectors as ticket_selectors
from usage import selectors
from usage.api.filters import USAGE_FILTERS, UsageFilter
from usage.api.serializers import UsageRowSerializer
from usage.models import UsageRecord

REQUEST_ID = r"^req_[^/]+$"


class UsageCursor(Cursor):
    # Newest first; request_id breaks ties between rows started in the same microsecond.
    ordering = ("-started_at", "-request_id")


class UsageScoped(AccountScoped, generics.GenericAPIView):
    serializer_class = UsageRowSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no account
            return UsageRecord.objects.none()
        return selectors.usage_rows(account_id=self.account.pk)

    def rows_serialized(self, rows, *, many: bool):
        items = list(rows) if many else [rows]
        names = selectors.route_names(selectors.page_route_ids(items))
        tickets = ticket_selectors.tickets_by_request([row.request_id for row in items])
        context = self.get_serializer_context() | {"route_names": names, "tickets": tickets}
        return UsageRowSerializer(rows, many=many, context=context)


@extend_schema(tags=["usage"])
class UsageListView(UsageScoped, generics.ListAPIView):
    """The account's usage rows, newest first: one per request that presented one of its keys
    (success, failure, rejection or interruption), with its tokens, cost, frozen prices, timings and
    upstream attempts (routes by name)."""

    pagination_class = UsageCursor
    filterset_class = UsageFilter

    def list(self, request, *args, **kwargs):
        check_known(request, USAGE_FILTERS)
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(self.rows_serialized(page, many=True).data)


@extend_schema(
    tags=["usage"],
    parameters=[OpenApiParameter("request_id", str, OpenApiParameter.PATH, pattern=REQUEST_ID, description="req_…")],
)
class UsageRowView(UsageScoped, generics.RetrieveAPIView):
    """One usage row of the account, by its request_id (the x-request-id of the response)."""

    lookup_field = "request_id"

    def retrieve(self, request, *args, **kwargs):
        check_known(request, set())
        return Response(self.rows_serialized(self.get_object(), many=False).data)


urlpatterns = [
    path("usage", UsageListView.as_view(), name="api-usage"),
    # Request ids are req_… (usage/gateway/context.py), which keeps usage/summary (summary.py) apart.
    re_path(rf"^usage/(?P<request_id>{REQUEST_ID[1:-1]})$", UsageRowView.as_view(), name="api-usage-row"),
]
