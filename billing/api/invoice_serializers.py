"""Invoices as the dashboard API shows them: money as exact decimal strings, USD."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import Invoice, InvoiceLine


class InvoiceLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = (
            "model",
            "endpoint",
            "billing_result",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "image_count",
            "cost",
            "amount",
            "price_snapshot_ids",
        )
        read_only_fields = fields
        extra_kwargs = {
            "cost": {"help_text": "Exact: the ledger's charges for these requests."},
            "amount": {"help_text": "cost rounded to the cent once, half-even."},
        }


INVOICE_FIELDS: tuple[str, ...] = (
    "id",
    "number",
    "account_id",
    "period_start",
    "period_end",
    "currency",
    "opening_balance",
    "topups",
    "refunds",
    "adjustments",
    "usage_exact",
    "total",
    "closing_balance",
    "entry_count",
    "created_at",
    "downloads",
)


class InvoiceSerializer(serializers.ModelSerializer):
    account_id = serializers.IntegerField(read_only=True)
    downloads = serializers.SerializerMethodField()

    class Meta:
        model = Invoice
        fields = INVOICE_FIELDS
        read_only_fields = fields

    def get_downloads(self, invoice: Invoice) -> dict[str, str]:
        base = f"/api/v1/accounts/{invoice.account_id}/invoices/{invoice.pk}"
        return {"xlsx": f"{base}/xlsx", "csv": f"{base}/csv"}


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = (*INVOICE_FIELDS, "lines")
        read_only_fields = fields
