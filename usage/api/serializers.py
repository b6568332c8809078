"""What the usage endpoints answer. Money is an exact decimal string in the dashboard's own shapes;
in the OpenAI-shaped ones (openai_shape.py) it is an exact JSON number, as OpenAI's clients expect."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing import money
from billing.models import PriceSnapshot
from usage.models import UsageRecord
from usage.selectors import ERROR_CLASSES, TOKEN_COLUMNS


def Money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=money.MONEY_DIGITS, decimal_places=money.MONEY_PLACES, read_only=True, **kwargs
    )


def Price(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=money.PRICE_DIGITS, decimal_places=money.PRICE_PLACES, read_only=True, **kwargs
    )


# --- usage rows ----------------------------------------------------------------------------------


class UsagePriceSnapshotSerializer(serializers.ModelSerializer):
    """The prices the request was billed with, frozen when it started (USD; per 1M tokens)."""

    model = serializers.CharField(source="model_name", read_only=True)
    input_per_mtok = Price()
    output_per_mtok = Price()
    cached_input_per_mtok = Price()
    cache_write_per_mtok = Price()
    per_image = Price()
    per_request = Price()

    class Meta:
        model = PriceSnapshot
        fields = (
            "id",
            "model",
            "currency",
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "cache_write_per_mtok",
            "per_image",
            "per_request",
        )
        read_only_fields = fields


class UsageTokensSerializer(serializers.Serializer):
    input = serializers.IntegerField(source="input_tokens", read_only=True, help_text="Uncached input tokens.")
    output = serializers.IntegerField(
        source="output_tokens", read_only=True, help_text="Output tokens, reasoning included."
    )
    cached_input = serializers.IntegerField(source="cached_input_tokens", read_only=True)
    cache_write = serializers.IntegerField(source="cache_write_tokens", read_only=True)
    reasoning = serializers.IntegerField(source="reasoning_tokens", read_only=True)


class UsageAttemptSerializer(serializers.Serializer):
    """One upstream attempt under the request's trace: the route by name only."""

    attempt = serializers.IntegerField(read_only=True, default=None, allow_null=True)
    route = serializers.SerializerMethodField()
    provider = serializers.CharField(read_only=True, default="")
    upstream_model = serializers.CharField(read_only=True, default="")
    status = serializers.IntegerField(
        read_only=True, default=None, allow_null=True, help_text="The upstream's HTTP status; null: no answer."
    )
    error = serializers.CharField(read_only=True, default="", allow_blank=True)
    ms = serializers.FloatField(read_only=True, default=None, allow_null=True, help_text="Duration, milliseconds.")

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_route(self, attempt: dict) -> str | None:
        return self.context.get("route_names", {}).get(attempt.get("route_id"))


class UsageTicketSerializer(serializers.Serializer):
    """The diagnostic ticket already opened on this request (GET /api/v1/tickets/{id})."""

    id = serializers.IntegerField(read_only=True)
    status = serializers.CharField(read_only=True)
    url = serializers.SerializerMethodField()

    def get_url(self, ticket) -> str:
        return f"/api/v1/tickets/{ticket.id}"


def _ms(start, end) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


class UsageRowSerializer(serializers.ModelSerializer):
    api_key = serializers.IntegerField(source="api_key_id", read_only=True, allow_null=True)
    model = serializers.CharField(source="model_requested", read_only=True, help_text="The model the client asked for.")
    route = serializers.SerializerMethodField()
    tokens = UsageTokensSerializer(source="*", read_only=True)
    cost_usd = Money(help_text="What the request was charged, USD (exact).")
    uncharged_usd = Money(help_text="Cost above the request's hold, not charged (non-zero: a bound was wrong).")
    price_snapshot = UsagePriceSnapshotSerializer(read_only=True, allow_null=True)
    time_to_first_byte_ms = serializers.SerializerMethodField()
    duration_ms = serializers.SerializerMethodField()
    attempts = serializers.SerializerMethodField()
    ticket = serializers.SerializerMethodField()

    class Meta:
        model = UsageRecord
        fields = (
            "request_id",
            "trace_id",
            "api_key",
            "key_prefix",
            "endpoint",
            "model",
            "provider",
            "route",
            "upstream_model",
            "stream",
            "status",
            "error_class",
            "error_code",
            "error_message",
            "tokens",
            "image_count",
            "tokens_estimated",
            "max_tokens_requested",
            "max_tokens_applied",
            "cost_usd",
            "uncharged_usd",
            "billing_result",
            "price_snapshot",
            "started_at",
            "first_byte_at",
            "finished_at",
            "time_to_first_byte_ms",
            "duration_ms",
            "output_reached_client",
            "client_disconnected_at",
            "attempts",
            "ticket",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="The route that answered, by name."))
    def get_route(self, row: UsageRecord) -> str | None:
        return self.context.get("route_names", {}).get(row.route_id)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_time_to_first_byte_ms(self, row: UsageRecord) -> int | None:
        return _ms(row.started_at, row.first_byte_at)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_duration_ms(self, row: UsageRecord) -> int | None:
        return _ms(row.started_at, row.finished_at)

    @extend_schema_field(UsageTicketSerializer(allow_null=True))
    def get_ticket(self, row: UsageRecord) -> dict | None:
        ticket = self.context.get("tickets", {}).get(row.request_id)
        return UsageTicketSerializer(ticket).data if ticket is not None else None

    @extend_schema_field(UsageAttemptSerializer(many=True))
    def get_attempts(self, row: UsageRecord) -> list:
        attempts = [a for a in row.attempts if isinstance(a, dict)] if isinstance(row.attempts, list) else []
        return UsageAttemptSerializer(attempts, many=True, context=self.context).data


# --- the summary ---------------------------------------------------------------------------------


class UsageErrorsByClassSerializer(serializers.Serializer):
    def get_fields(self):
        return {name: serializers.IntegerField(source=f"error_{name}", read_only=True) for name in ERROR_CLASSES}


class UsageSummaryTokensSerializer(serializers.Serializer):
    def get_fields(self):
        return {kind: serializers.IntegerField(source=f"tokens_{kind}", read_only=True) for kind in TOKEN_COLUMNS}


class UsageMetricsSerializer(serializers.Serializer):
    requests = serializers.IntegerField(read_only=True)
    errors = serializers.IntegerField(read_only=True, help_text="Requests that failed (any error_class).")
    errors_by_class = UsageErrorsByClassSerializer(source="*", read_only=True)
    tokens = UsageSummaryTokensSerializer(source="*", read_only=True)
    image_count = serializers.IntegerField(read_only=True)
    cost_usd = Money()
    uncharged_usd = Money()


class UsageSeriesPointSerializer(UsageMetricsSerializer):
    start = serializers.DateTimeField(source="bucket", read_only=True, help_text="The bucket's start (UTC).")
    model = serializers.CharField(
        source="model_requested", read_only=True, default=None, allow_null=True, help_text="group_by=model"
    )
    api_key = serializers.IntegerField(
        source="api_key_id", read_only=True, default=None, allow_null=True, help_text="group_by=api_key"
    )
    key_prefix = serializers.CharField(read_only=True, default=None, allow_null=True, help_text="group_by=api_key")
    endpoint = serializers.CharField(read_only=True, default=None, allow_null=True, help_text="group_by=endpoint")


class UsageSummarySerializer(serializers.Serializer):
    start = serializers.DateTimeField(read_only=True)
    end = serializers.DateTimeField(read_only=True)
    bucket = serializers.ChoiceField(choices=("hour", "day"), read_only=True)
    group_by = serializers.ChoiceField(choices=("model", "api_key", "endpoint"), read_only=True, allow_null=True)
    totals = UsageMetricsSerializer(read_only=True)
    series = UsageSeriesPointSerializer(many=True, read_only=True, help_text="Buckets with no requests are left out.")
