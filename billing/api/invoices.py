"""Invoices: GET /api/v1/accounts/{account_id}/invoices, …/invoices/{invoice_id} (with its lines),
…/invoices/{invoice_id}/xlsx and …/csv (the files). Built monthly by the beat schedule (the 1st,
00:15 UTC) and final; members read them, like the ledger."""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import path, re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics
from rest_framework.views import APIView

from billing import invoice_files
from billing.api.invoice_serializers import InvoiceDetailSerializer, InvoiceSerializer
from billing.models import Invoice
from openbili.api.pagination import Cursor
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped

FORMATS = invoice_files.FILES


class InvoiceCursor(Cursor):
    ordering = ("-period_start", "-id")


def invoices_of(account):
    return Invoice.objects.filter(account=account)


@extend_schema(tags=["invoices"])
class InvoiceListView(AccountScoped, generics.ListAPIView):
    """The account's monthly invoices, newest month first."""

    serializer_class = InvoiceSerializer
    pagination_class = InvoiceCursor

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        check_known(self.request, set())
        return invoices_of(self.account)


@extend_schema(tags=["invoices"])
class InvoiceView(AccountScoped, generics.RetrieveAPIView):
    """One invoice with its lines; another account's id is a 404."""

    serializer_class = InvoiceDetailSerializer
    lookup_url_kwarg = "invoice_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        check_known(self.request, set())
        return invoices_of(self.account).prefetch_related("lines")


@extend_schema(tags=["invoices"])
class InvoiceDownloadView(AccountScoped, APIView):
    """The invoice as XLSX (summary, lines, price snapshots) or CSV (lines and a total row)."""

    @extend_schema(
        tags=["invoices"],
        operation_id="accounts_invoices_file",
        parameters=[
            OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(FORMATS), description="xlsx or csv")
        ],
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="The file.")},
    )
    def get(self, request, account_id: int, invoice_id: int, kind: str):
        check_known(request, set())
        invoice = invoices_of(self.account).select_related("account").filter(pk=invoice_id).first()
        if invoice is None:
            raise exceptions.NotFound("No such invoice.")
        content_type, render = FORMATS[kind]
        response = HttpResponse(render(invoice), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.{kind}"'
        return response


urlpatterns = [
    path("invoices", InvoiceListView.as_view(), name="api-invoices"),
    path("invoices/<int:invoice_id>", InvoiceView.as_view(), name="api-invoice"),
    re_path(
        r"^invoices/(?P<invoice_id>[0-9]+)/(?P<kind>xlsx|csv)$", InvoiceDownloadView.as_view(), name="api-invoice-file"
    ),
]
