"""Tickets as the dashboard API shows them. The bundle is the frozen JSON the ticket was opened
with, shown as stored (money and moments as the strings they were written as)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import LedgerEntry
from tickets.models import SUBJECT_MAX, TEXT_MAX, Ticket, TicketMessage
from usage.models import UsageRecord


class BundlePricesSerializer(serializers.Serializer):
    """The prices the request was billed with (USD; per 1M tokens, per image, per request)."""

    id = serializers.IntegerField(read_only=True)
    model = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    input_per_mtok = serializers.CharField(read_only=True)
    output_per_mtok = serializers.CharField(read_only=True)
    cached_input_per_mtok = serializers.CharField(read_only=True)
    cache_write_per_mtok = serializers.CharField(read_only=True)
    per_image = serializers.CharField(read_only=True)
    per_request = serializers.CharField(read_only=True)


class BundleSerializer(serializers.Serializer):
    """The no-secret diagnostic bundle of one request (CONTRACT §5): what support needs, never a
    key (only its prefix), a prompt or a completion."""

    source = serializers.CharField(read_only=True, help_text="Always usage: the ticket came from a usage row.")
    request_id = serializers.CharField(read_only=True)
    trace_id = serializers.CharField(read_only=True)
    model = serializers.CharField(read_only=True, help_text="The model the client asked for.")
    endpoint = serializers.CharField(read_only=True)
    status = serializers.IntegerField(read_only=True, allow_null=True, help_text="The HTTP status sent to the client.")
    error_class = serializers.ChoiceField(UsageRecord.ErrorClass.choices, read_only=True, allow_null=True)
    error_code = serializers.CharField(read_only=True, allow_null=True)
    key_prefix = serializers.CharField(read_only=True, allow_null=True, help_text="The key's visible prefix only.")
    occurred_at = serializers.CharField(read_only=True, help_text="When the request started (ISO 8601, UTC).")
    retry_advice = serializers.CharField(read_only=True, help_text="What to do, for the request's error class.")
    cost_usd = serializers.CharField(read_only=True, help_text="What the request was charged (exact decimal).")
    billing_result = serializers.ChoiceField(UsageRecord.BillingResult.choices, read_only=True)
    price_snapshot = BundlePricesSerializer(read_only=True, allow_null=True)
    stream = serializers.BooleanField(read_only=True)
    tokens_received = serializers.BooleanField(
        read_only=True, help_text="Whether output reached the client before the request ended."
    )
    client_disconnected_at = serializers.CharField(
        read_only=True, allow_null=True, help_text="When the client went away, if it did (ISO 8601, UTC)."
    )


class TicketOpenSerializer(serializers.Serializer):
    request_id = serializers.CharField(max_length=64, help_text="The usage row's request_id (req_…).")
    subject = serializers.CharField(max_length=SUBJECT_MAX)
    description = serializers.CharField(max_length=TEXT_MAX, required=False, allow_blank=True, default="")
    tried = serializers.CharField(
        max_length=TEXT_MAX, required=False, allow_blank=True, default="", help_text="What you already tried."
    )


class TicketReplyInputSerializer(serializers.Serializer):
    body = serializers.CharField(max_length=TEXT_MAX)


class TicketMessageSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()

    class Meta:
        model = TicketMessage
        fields = ("id", "kind", "author", "body", "created_at")
        read_only_fields = fields
        extra_kwargs = {"kind": {"help_text": "customer or support (support's internal notes are never listed)."}}

    @extend_schema_field(serializers.CharField(help_text="The customer's username, or 'Openbili support'."))
    def get_author(self, message: TicketMessage) -> str:
        if message.kind == TicketMessage.Kind.SUPPORT:
            return "Openbili support"
        return message.author.get_username() if message.author else ""


class TicketRefundSerializer(serializers.ModelSerializer):
    """A refund granted on the ticket: its ledger entry."""

    ledger_entry = serializers.IntegerField(source="pk", read_only=True)

    class Meta:
        model = LedgerEntry
        fields = ("ledger_entry", "amount", "balance_after", "reason", "created_at")
        read_only_fields = fields


SUMMARY_FIELDS: tuple[str, ...] = (
    "id",
    "account_id",
    "request_id",
    "subject",
    "status",
    "model",
    "error_class",
    "billing_result",
    "occurred_at",
    "created_at",
    "updated_at",
    "resolved_at",
)


class TicketSummarySerializer(serializers.ModelSerializer):
    account_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Ticket
        fields = SUMMARY_FIELDS
        read_only_fields = fields


class TicketSerializer(TicketSummarySerializer):
    bundle = BundleSerializer(read_only=True)
    messages = serializers.SerializerMethodField()
    refunds = serializers.SerializerMethodField()

    class Meta(TicketSummarySerializer.Meta):
        fields = (
            *SUMMARY_FIELDS,
            "description",
            "tried",
            "resolution",
            "bundle",
            "messages",
            "refunds",
        )
        read_only_fields = fields

    @extend_schema_field(TicketMessageSerializer(many=True))
    def get_messages(self, ticket: Ticket) -> list:
        shown = [m for m in ticket.messages.all() if m.kind != TicketMessage.Kind.INTERNAL]
        return TicketMessageSerializer(shown, many=True).data

    @extend_schema_field(TicketRefundSerializer(many=True))
    def get_refunds(self, ticket: Ticket) -> list:
        entries = [e for e in ticket.ledger_entries.all() if e.kind == LedgerEntry.Kind.REFUND]
        return TicketRefundSerializer(entries, many=True).data
