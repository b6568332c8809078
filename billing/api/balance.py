"""Balance and ledger: GET /api/v1/accounts/{account_id}/balance, …/ledger, …/ledger/{entry_id}.

The balance is the account row (kept equal to the sum of its append-only ledger entries by the
ledger services); the ledger lists those entries newest first, each with the request and hold it
settles, if any.
"""

from __future__ import annotations

import django_filters
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics

from billing.api.balance_serializers import BalanceSerializer, LedgerEntrySerializer
from billing.models import Account, LedgerEntry
from billing.selectors import ledger_entries
from openbili.api.params import UtcDateTimeFilter, check_known
from openbili.api.tenancy import AccountScoped


@extend_schema(tags=["balance"])
class BalanceView(AccountScoped, generics.RetrieveAPIView):
    """The account's balance, open holds (reserved), credit limit and what is available."""

    serializer_class = BalanceSerializer
    queryset = Account.objects.none()

    def get_object(self):
        check_known(self.request, set())
        return self.account  # read with the membership check, in this request


class LedgerFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=LedgerEntry.Kind.choices)
    created_after = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="ISO 8601; entries at or after it."
    )
    created_before = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="ISO 8601; entries before it."
    )
    request_id = django_filters.CharFilter(max_length=64, help_text="Entries of this gateway request.")

    class Meta:
        model = LedgerEntry
        fields = ("kind", "request_id")


KNOWN = frozenset(LedgerFilter.base_filters)


@extend_schema(tags=["balance"])
class LedgerListView(AccountScoped, generics.ListAPIView):
    """The account's ledger entries, newest first (cursor-paginated)."""

    serializer_class = LedgerEntrySerializer
    filterset_class = LedgerFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return LedgerEntry.objects.none()
        check_known(self.request, KNOWN)
        return ledger_entries(account_id=self.account.pk)


@extend_schema(tags=["balance"])
class LedgerEntryView(AccountScoped, generics.RetrieveAPIView):
    """One ledger entry of the account; another account's id is a 404."""

    serializer_class = LedgerEntrySerializer
    lookup_url_kwarg = "entry_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return LedgerEntry.objects.none()
        check_known(self.request, set())
        return ledger_entries(account_id=self.account.pk)


urlpatterns = [
    path("balance", BalanceView.as_view(), name="api-balance"),
    path("ledger", LedgerListView.as_view(), name="api-ledger"),
    path("ledger/<int:entry_id>", LedgerEntryView.as_view(), name="api-ledger-entry"),
]
