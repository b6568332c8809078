"""What the model plaza answers: a catalog model as one account sees it."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import PriceVersion
from billing.selectors import PLAZA_STATUSES
from usage.gateway.endpoints.served import PATHS

ENDPOINTS = tuple(path for paths in PATHS.values() for path in paths)


class PricingSerializer(serializers.ModelSerializer):
    """The model's current price version: exact decimal strings, USD."""

    currency = serializers.SerializerMethodField(help_text="Always USD.")

    class Meta:
        model = PriceVersion
        fields = ("currency", *PriceVersion.PRICE_FIELDS, "effective_from")
        read_only_fields = fields

    def get_currency(self, version) -> str:
        return "USD"


class PlazaModelSerializer(serializers.Serializer):
    """`status` comes from billing.selectors.model_visibility, the one visibility rule (CONTRACT §4);
    `endpoints` are those the gateway serves the model on now (none unless visible)."""

    name = serializers.CharField(help_text="The model id to send, e.g. gpt-5.")
    display_name = serializers.CharField()
    owned_by = serializers.CharField()
    kind = serializers.ChoiceField(choices=("chat", "image"))
    context_window = serializers.IntegerField(help_text="Maximum input + output tokens.")
    max_output_tokens = serializers.IntegerField(help_text="Larger max_tokens values are clamped to it.")
    status = serializers.ChoiceField(
        choices=PLAZA_STATUSES, help_text="visible, or why not: no_route, no_price, probe_failing, disabled."
    )
    visible = serializers.BooleanField(help_text="Listed by GET /v1/models and callable now.")
    endpoints = serializers.ListField(child=serializers.ChoiceField(choices=ENDPOINTS))
    pricing = PricingSerializer(allow_null=True, help_text="Current prices; null when the model has none.")
    key_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text="This account's usable keys whose scope includes the model."
    )
