"""The account's usage in the shapes of OpenAI's organization Usage API (completions) and Costs API,
so that tools written for those read an Openbili account unchanged (the official SDK's
`client.admin.organization.usage.completions()` / `.costs()` with base_url
…/api/v1/accounts/{id}/ and a personal token as its admin key).

OpenAI's rules, kept: `start_time` (Unix seconds, inclusive) is required, `end_time` (exclusive)
defaults to now; buckets are `bucket_width` wide and aligned to UTC minute / hour / day boundaries
(the first one holds start_time), listed whether or not they hold usage, `limit` per page (1d:
default 7, at most 31; 1h: 24, 168; 1m: 60, 1440; costs: 1d only, default 7, at most 180), the next
page by the opaque `next_page` cursor passed back as `page`. Array parameters are accepted
repeated (`models=a&models=b`) and with brackets (`models[]=a`, the SDK's form).

Where Openbili has nothing to match: an account has no projects, users, batch jobs or service
tiers. Grouping by them is accepted and yields one group (project_id and user_id null, batch
false, service_tier "default", api_source ignored); filtering by project_ids or user_ids is a 400
(silently answering for "all projects" would mislead); batch=true matches nothing. `model` is the
model the client asked for; `api_key_id` is the key's id as a string (pass it back in
`api_key_ids`); a costs `line_item` is a model. input_tokens counts cached and cache-write tokens,
as OpenAI's does. Money is an exact JSON number (never through a float), currency "usd".
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from datetime import UTC, datetime
from decimal import Decimal

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.utils import encoders

# bucket_width → (seconds, date_trunc unit, default limit, max limit)
COMPLETIONS_WIDTHS = {"1m": (60, "minute", 60, 1440), "1h": (3600, "hour", 24, 168), "1d": (86400, "day", 7, 31)}
COSTS_WIDTHS = {"1d": (86400, "day", 7, 180)}
COMPLETIONS_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "api_source")
COSTS_GROUPS = ("project_id", "user_id", "line_item", "api_key_id", "api_source")
GROUP_COLUMNS = {"model": ("model_requested",), "line_item": ("model_requested",), "api_key_id": ("api_key_id",)}
LISTS = ("group_by", "models", "api_key_ids", "line_items", "project_ids", "user_ids")
PAGE_START = "page_"
LAST_SECOND = 253402300799 - 86400  # a day before 9999-12-31T23:59:59Z: every bucket's end is a date


def constant(value: str) -> serializers.Field:
    """A field that always says `value` (an object's type tag). Documented by a pattern, not a
    one-value enum: the schema's enum hook would merge every field named `object` into one enum."""

    @extend_schema_field({"type": "string", "pattern": f"^{re.escape(value)}$", "example": value})
    class Constant(serializers.Field):
        def __init__(self):
            super().__init__(read_only=True, source="*")

        def to_representation(self, _instance):
            return value

    return Constant()


def known_params(names: tuple[str, ...]) -> set[str]:
    return {*names, *(f"{name}[]" for name in names if name in LISTS)}


def query_data(request, names: tuple[str, ...]) -> dict:
    """The query parameters as a serializer's input: lists from `name` and `name[]` both."""
    params = request.query_params
    data: dict = {}
    for name in names:
        if name in LISTS:
            values = params.getlist(name) + params.getlist(f"{name}[]")
            if values:
                data[name] = values
        elif name in params:
            data[name] = params[name]
    return data


def page_encode(start: int) -> str:
    return PAGE_START + base64.urlsafe_b64encode(struct.pack(">q", start)).decode()


def page_decode(page: str) -> int | None:
    if not page.startswith(PAGE_START):
        return None
    try:
        raw = base64.urlsafe_b64decode(page[len(PAGE_START) :].encode())
    except (binascii.Error, ValueError):
        return None
    return struct.unpack(">q", raw)[0] if len(raw) == 8 else None


class _Query(serializers.Serializer):
    widths: dict[str, tuple[int, str, int, int]] = {}
    groups: tuple[str, ...] = ()

    start_time = serializers.IntegerField(min_value=0, max_value=LAST_SECOND, help_text="Unix seconds, inclusive.")
    end_time = serializers.IntegerField(
        min_value=0, max_value=LAST_SECOND, required=False, help_text="Unix seconds, exclusive; default now."
    )
    limit = serializers.IntegerField(min_value=1, required=False)
    page = serializers.CharField(required=False)
    api_key_ids = serializers.ListField(child=serializers.CharField(), required=False)
    project_ids = serializers.ListField(child=serializers.CharField(), required=False)
    group_by = serializers.ListField(child=serializers.CharField(), required=False)

    def get_fields(self):
        fields = super().get_fields()
        fields["bucket_width"] = serializers.ChoiceField(choices=tuple(self.widths), default="1d")
        return fields

    # Lists are checked whole, so that the error names the parameter (group_by), not an item (group_by.0).
    def validate_group_by(self, value):
        unknown = sorted(set(value) - set(self.groups))
        if unknown:
            raise serializers.ValidationError(f"Not a grouping: {', '.join(unknown)}; one of {', '.join(self.groups)}.")
        return value

    def validate_api_key_ids(self, value):
        if not all(item.isdigit() and len(item) <= 18 for item in value):
            raise serializers.ValidationError("API key ids are numbers (the api_key_id of a result).")
        return value

    def validate_project_ids(self, value):
        raise serializers.ValidationError("An Openbili account has no projects: leave project_ids out.")

    def validate(self, data):
        seconds, unit, default_limit, max_limit = self.widths[data["bucket_width"]]
        limit = data.get("limit", default_limit)
        if limit > max_limit:
            raise serializers.ValidationError(
                {"limit": [f"At most {max_limit} for bucket_width={data['bucket_width']}."]}
            )
        start = data["start_time"]
        end = data.get("end_time")
        if end is not None and end <= start:
            raise serializers.ValidationError({"end_time": ["Must be after start_time."]})
        end = end if end is not None else int(timezone.now().timestamp()) + 1
        first = start - start % seconds
        page_start = first
        if "page" in data:
            decoded = page_decode(data["page"])
            if decoded is None or decoded % seconds or not first <= decoded < max(end, first + 1):
                raise serializers.ValidationError({"page": ["Not a page cursor of this query."]})
            page_start = decoded
        remaining = max(0, -(-(end - page_start) // seconds))  # buckets from page_start up to end
        count = min(limit, remaining)
        data |= {
            "seconds": seconds,
            "unit": unit,
            "buckets": [page_start + i * seconds for i in range(count)],
            "range": (max(start, page_start), min(end, page_start + count * seconds)),
            "next_page": page_encode(page_start + count * seconds) if remaining > limit else None,
            "group_columns": tuple(c for g in data.get("group_by", ()) for c in GROUP_COLUMNS.get(g, ())),
            "api_key_ids": [int(i) for i in data["api_key_ids"]] if "api_key_ids" in data else None,
        }
        return data


class CompletionsQuery(_Query):
    widths = COMPLETIONS_WIDTHS
    groups = COMPLETIONS_GROUPS

    models = serializers.ListField(child=serializers.CharField(), required=False)
    batch = serializers.ChoiceField(choices=("true", "false"), required=False)
    user_ids = serializers.ListField(child=serializers.CharField(), required=False)

    def validate_user_ids(self, value):
        raise serializers.ValidationError("An Openbili account has no users to filter usage by: leave user_ids out.")


class CostsQuery(_Query):
    widths = COSTS_WIDTHS
    groups = COSTS_GROUPS

    line_items = serializers.ListField(child=serializers.CharField(), required=False)


COMPLETIONS_PARAMS = (*CompletionsQuery().fields,)
COSTS_PARAMS = (*CostsQuery().fields,)


def range_datetimes(query: dict) -> tuple[datetime, datetime]:
    start, end = query["range"]
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


# --- responses -----------------------------------------------------------------------------------


class _Result(serializers.Serializer):
    """A result from one aggregated group (usage_aggregate); context["group_by"]: what it groups by."""

    def grouped(self, name: str) -> bool:
        return name in self.context.get("group_by", ())

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_project_id(self, group: dict) -> None:
        return None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_api_key_id(self, group: dict) -> str | None:
        key_id = group.get("api_key_id") if self.grouped("api_key_id") else None
        return None if key_id is None else str(key_id)


class CompletionsResultSerializer(_Result):
    object = constant("organization.usage.completions.result")
    input_tokens = serializers.SerializerMethodField(help_text="Input tokens, cached and cache-write included.")
    output_tokens = serializers.IntegerField(source="tokens_output", help_text="Reasoning included.")
    input_cached_tokens = serializers.IntegerField(source="tokens_cached_input")
    input_cache_write_tokens = serializers.IntegerField(source="tokens_cache_write")
    input_uncached_tokens = serializers.IntegerField(source="tokens_input", help_text="Excluding cache-write.")
    input_audio_tokens = serializers.IntegerField(default=0)
    output_audio_tokens = serializers.IntegerField(default=0)
    num_model_requests = serializers.IntegerField(source="requests")
    project_id = serializers.SerializerMethodField()
    user_id = serializers.SerializerMethodField()
    api_key_id = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    batch = serializers.SerializerMethodField()
    service_tier = serializers.SerializerMethodField()

    def get_input_tokens(self, group: dict) -> int:
        return sum(group[f"tokens_{kind}"] or 0 for kind in ("input", "cached_input", "cache_write"))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_user_id(self, group: dict) -> None:
        return None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_model(self, group: dict) -> str | None:
        return group.get("model_requested") if self.grouped("model") else None

    @extend_schema_field(serializers.BooleanField(allow_null=True))
    def get_batch(self, group: dict) -> bool | None:
        return False if self.grouped("batch") else None  # Openbili has no batch jobs

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_service_tier(self, group: dict) -> str | None:
        return "default" if self.grouped("service_tier") else None


class AmountSerializer(serializers.Serializer):
    value = serializers.DecimalField(
        max_digits=30, decimal_places=12, coerce_to_string=False, source="cost_usd", help_text="Exact, USD."
    )
    currency = constant("usd")


class CostsResultSerializer(_Result):
    object = constant("organization.costs.result")
    amount = AmountSerializer(source="*")
    line_item = serializers.SerializerMethodField()
    project_id = serializers.SerializerMethodField()
    api_key_id = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="group_by=line_item: the model."))
    def get_line_item(self, group: dict) -> str | None:
        return group.get("model_requested") if self.grouped("line_item") else None


def _page_serializers(name: str, result: type[serializers.Serializer]):
    bucket = type(
        f"{name}BucketSerializer",
        (serializers.Serializer,),
        {
            "object": constant("bucket"),
            "start_time": serializers.IntegerField(help_text="Unix seconds."),
            "end_time": serializers.IntegerField(help_text="Unix seconds."),
            "results": result(many=True),
        },
    )
    page = type(
        f"{name}PageSerializer",
        (serializers.Serializer,),
        {
            "object": constant("page"),
            "data": bucket(many=True),
            "has_more": serializers.BooleanField(),
            "next_page": serializers.CharField(allow_null=True, help_text="Pass back as `page`."),
        },
    )
    return page


CompletionsPageSerializer = _page_serializers("OpenAIUsageCompletions", CompletionsResultSerializer)
CostsPageSerializer = _page_serializers("OpenAICosts", CostsResultSerializer)


def page_of(query: dict, groups: list[dict]) -> dict:
    """The page object: every bucket of the page, each with the groups that fell in it."""
    by_bucket: dict[int, list[dict]] = {}
    for group in groups:
        by_bucket.setdefault(int(group["bucket"].timestamp()), []).append(group)
    seconds = query["seconds"]
    data = [{"start_time": b, "end_time": b + seconds, "results": by_bucket.get(b, [])} for b in query["buckets"]]
    return {"data": data, "has_more": query["next_page"] is not None, "next_page": query["next_page"]}


# --- rendering -----------------------------------------------------------------------------------

_DECIMAL = "\x00decimal:"
_DECIMAL_JSON = re.compile(rb'"\\u0000decimal:(-?[0-9]+(?:\.[0-9]+)?)"')


class _ExactEncoder(encoders.JSONEncoder):
    def default(self, obj):
        if isinstance(obj, Decimal):  # DRF's encoder would make it a float
            text = format(obj.normalize() if obj else Decimal(0), "f")
            return _DECIMAL + text
        return super().default(obj)


class ExactJSONRenderer(JSONRenderer):
    """JSON whose decimals are exact JSON numbers (`0.000000020000` stays that, no float between),
    as OpenAI's Costs API answers numbers where the dashboard's own shapes use decimal strings."""

    encoder_class = _ExactEncoder

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return _DECIMAL_JSON.sub(rb"\1", super().render(data, accepted_media_type, renderer_context))
