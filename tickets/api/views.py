"""Diagnostic tickets for the account's members (CONTRACT §5):

- POST /api/v1/tickets — open a ticket from a usage row by its request_id (201); the same request
  again returns its existing ticket (200), whoever asks and whatever text comes with it.
- GET /api/v1/tickets — the tickets of every account the caller belongs to, newest first.
- GET /api/v1/tickets/{id} — one ticket: bundle, conversation (never support's internal notes),
  refunds; POST …/replies — the customer's reply.
- GET /api/v1/usage/{request_id}/bundle — the request's bundle alone, to paste into any channel.

The account comes from the usage row or the ticket, and goes through the one membership gate
(openbili.api.tenancy): a request or ticket of an account the caller is not a member of is a 404,
exactly like one that does not exist. Opening tickets is rate limited per account (throttle scope
ticket_create); asking for an existing ticket again is not counted.
"""

from __future__ import annotations

import django_filters
from django.db.models import Prefetch, QuerySet
from django.urls import path, re_path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from billing.models import LedgerEntry, Membership
from openbili.api.errors import service_call
from openbili.api.params import UtcDateTimeFilter, check_known
from openbili.api.tenancy import membership
from tickets import services
from tickets.api.serializers import (
    BundleSerializer,
    TicketMessageSerializer,
    TicketOpenSerializer,
    TicketReplyInputSerializer,
    TicketSerializer,
    TicketSummarySerializer,
)
from tickets.bundle import bundle_of
from tickets.models import Ticket, TicketMessage
from usage.api.rows import REQUEST_ID
from usage.models import UsageRecord


class TicketCreateThrottle(SimpleRateThrottle):
    """New tickets per account (not per caller: every member of an account shares it)."""

    scope = "ticket_create"

    def get_cache_key(self, request, view):
        return f"throttle_ticket_create_{view.ticket_account_id}"


def usage_row(request, request_id: str) -> tuple[Membership, UsageRecord]:
    """The caller's usage row by request_id, with its price snapshot; 404 for any other."""
    row = UsageRecord.objects.select_related("price_snapshot").filter(request_id=request_id).first()
    if row is None or row.account_id is None:
        raise exceptions.NotFound("No such request in your accounts.")
    try:
        member = membership(request, row.account_id)
    except exceptions.NotFound:
        raise exceptions.NotFound("No such request in your accounts.") from None
    return member, row


def tickets_of(user) -> QuerySet[Ticket]:
    """Tickets of the accounts `user` is an active member of."""
    accounts = Membership.objects.filter(user=user, user__is_active=True).values("account_id")
    return Ticket.objects.filter(account_id__in=accounts)


def with_conversation(tickets: QuerySet[Ticket]) -> QuerySet[Ticket]:
    shown = TicketMessage.objects.exclude(kind=TicketMessage.Kind.INTERNAL).select_related("author")
    refunds = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).order_by("id")
    return tickets.prefetch_related(Prefetch("messages", queryset=shown), Prefetch("ledger_entries", queryset=refunds))


class TicketFilter(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id", help_text="One of your accounts' id.")
    status = django_filters.ChoiceFilter(choices=Ticket.Status.choices)
    model = django_filters.CharFilter(help_text="The model the request asked for.")
    error_class = django_filters.ChoiceFilter(choices=UsageRecord.ErrorClass.choices)
    billing_result = django_filters.ChoiceFilter(choices=UsageRecord.BillingResult.choices)
    request_id = django_filters.CharFilter(max_length=64)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="ISO 8601.")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="ISO 8601.")
    occurred_after = UtcDateTimeFilter(
        field_name="occurred_at", lookup_expr="gte", help_text="The request started at or after (ISO 8601)."
    )
    occurred_before = UtcDateTimeFilter(
        field_name="occurred_at", lookup_expr="lt", help_text="The request started before (ISO 8601)."
    )

    class Meta:
        model = Ticket
        fields: list[str] = []


KNOWN = frozenset(TicketFilter.base_filters)


@extend_schema(tags=["tickets"])
class TicketListView(generics.ListCreateAPIView):
    """Your accounts' diagnostic tickets, newest first; POST opens one from a usage row."""

    serializer_class = TicketSummarySerializer
    filterset_class = TicketFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Ticket.objects.none()
        check_known(self.request, KNOWN)
        return tickets_of(self.request.user)

    @extend_schema(
        request=TicketOpenSerializer,
        responses={
            201: OpenApiResponse(TicketSerializer, description="Opened, with the request's bundle."),
            200: OpenApiResponse(TicketSerializer, description="The request already had this ticket."),
            409: OpenApiResponse(description="The request is still in progress."),
        },
    )
    def post(self, request, *args, **kwargs):
        check_known(request, set())
        form = TicketOpenSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        member, row = usage_row(request, data["request_id"])
        existing = Ticket.objects.filter(request_id=row.request_id).first()
        if existing is None:
            self.ticket_account_id = member.account_id
            throttle = TicketCreateThrottle()
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())
            ticket, created = service_call(
                lambda: services.ticket_open(
                    account=member.account,
                    row=row,
                    user=request.user,
                    subject=data["subject"],
                    description=data["description"],
                    tried=data["tried"],
                )
            )
        else:
            ticket, created = existing, False
        ticket = with_conversation(Ticket.objects.filter(pk=ticket.pk)).get()
        return Response(
            TicketSerializer(ticket).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


@extend_schema(tags=["tickets"])
class TicketView(generics.RetrieveAPIView):
    """One ticket: its bundle, the conversation with support, its status and any refund."""

    serializer_class = TicketSerializer
    lookup_url_kwarg = "ticket_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Ticket.objects.none()
        check_known(self.request, set())
        return with_conversation(tickets_of(self.request.user))


@extend_schema(
    tags=["tickets"],
    request=TicketReplyInputSerializer,
    responses={201: TicketMessageSerializer, 409: OpenApiResponse(description="The ticket is closed.")},
)
class TicketReplyView(APIView):
    """Reply on a ticket (reopens it if support had resolved it; a closed ticket takes no reply)."""

    def post(self, request, ticket_id: int):
        check_known(request, set())
        ticket = tickets_of(request.user).filter(pk=ticket_id).first()
        if ticket is None:
            raise exceptions.NotFound("No such ticket in your accounts.")
        form = TicketReplyInputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        message = service_call(
            lambda: services.ticket_reply(
                ticket=ticket, author=request.user, body=form.validated_data["body"], kind=TicketMessage.Kind.CUSTOMER
            )
        )
        return Response(TicketMessageSerializer(message).data, status=status.HTTP_201_CREATED)


@extend_schema(
    tags=["tickets"],
    parameters=[OpenApiParameter("request_id", str, OpenApiParameter.PATH, pattern=REQUEST_ID, description="req_…")],
    responses={200: BundleSerializer},
)
class BundleView(APIView):
    """The request's no-secret diagnostic bundle alone, as of now, to paste into any channel."""

    def get(self, request, request_id: str):
        check_known(request, set())
        _, row = usage_row(request, request_id)
        return Response(BundleSerializer(bundle_of(row)).data)


urlpatterns = [
    re_path(r"^tickets/?$", TicketListView.as_view(), name="api-tickets"),
    path("tickets/<int:ticket_id>", TicketView.as_view(), name="api-ticket"),
    path("tickets/<int:ticket_id>/replies", TicketReplyView.as_view(), name="api-ticket-replies"),
    re_path(rf"^usage/(?P<request_id>{REQUEST_ID[1:-1]})/bundle$", BundleView.as_view(), name="api-usage-bundle"),
]
