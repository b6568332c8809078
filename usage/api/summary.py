"""The usage page's summary, and the same aggregates in the shapes of OpenAI's organization Usage
and Costs APIs (openai_shape.py). Each answer is one GROUP BY query (usage/selectors.py)."""

from __future__ import annotations

from datetime import timedelta

from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped
from usage import selectors
from usage.api import openai_shape
from usage.api.serializers import UsageSummarySerializer

DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=400)
MAX_HOURLY_SPAN = timedelta(days=31)  # 744 points per group: a chart, not an export


class SummaryQuery(serializers.Serializer):
    start = serializers.DateTimeField(required=False, help_text="ISO 8601, inclusive; default: end − 30 days.")
    end = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive; default: now.")
    bucket = serializers.ChoiceField(choices=("hour", "day"), default="day", help_text="UTC hours or days.")
    group_by = serializers.ChoiceField(choices=tuple(selectors.GROUP_COLUMNS), required=False)

    def validate(self, data):
        end = data.get("end") or (data["start"] + DEFAULT_SPAN if "start" in data else timezone.now())
        start = data.get("start") or end - DEFAULT_SPAN
        if end <= start:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        if end - start > MAX_SPAN:
            raise serializers.ValidationError({"start": [f"The range is at most {MAX_SPAN.days} days."]})
        if data["bucket"] == "hour" and end - start > MAX_HOURLY_SPAN:
            raise serializers.ValidationError(
                {"bucket": [f"Hourly buckets cover at most {MAX_HOURLY_SPAN.days} days."]}
            )
        return data | {"start": start, "end": end}


@extend_schema(
    tags=["usage"],
    parameters=[SummaryQuery],
    responses=UsageSummarySerializer,
)
class UsageSummaryView(AccountScoped, APIView):
    """Totals of the account's usage over a time range, and their time series by hour or day
    (UTC), optionally grouped by model, API key or endpoint: requests, errors (by error_class),
    tokens by kind, images and cost. The range defaults to the last 30 days, at most 400."""

    def get(self, request, account_id):
        check_known(request, set(SummaryQuery().fields))
        query = SummaryQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        group_by = q.get("group_by")
        series = selectors.usage_aggregate(
            account_id=self.account.pk,
            start=q["start"],
            end=q["end"],
            bucket=q["bucket"],
            group_columns=selectors.GROUP_COLUMNS[group_by] if group_by else (),
        )
        summary = {
            "start": q["start"],
            "end": q["end"],
            "bucket": q["bucket"],
            "group_by": group_by,
            "totals": selectors.totals_of(series),
            "series": series,
        }
        return Response(UsageSummarySerializer(summary).data)


def _openai_parameters(names: tuple[str, ...], widths: dict, groups: tuple[str, ...]) -> list[OpenApiParameter]:
    described = {
        "start_time": (OpenApiTypes.INT, True, "Start time (Unix seconds) of the query time range, inclusive."),
        "end_time": (OpenApiTypes.INT, False, "End time (Unix seconds), exclusive; default now."),
        "bucket_width": (OpenApiTypes.STR, False, "Width of each time bucket; default 1d."),
        "limit": (
            OpenApiTypes.INT,
            False,
            "Buckets per page: " + ", ".join(f"{w}: default {v[2]}, max {v[3]}" for w, v in widths.items()),
        ),
        "page": (OpenApiTypes.STR, False, "The next_page of the previous answer."),
        "group_by": (OpenApiTypes.STR, False, "Group by these fields (repeat it, or group_by[])."),
        "models": (OpenApiTypes.STR, False, "Only these models (repeat it, or models[])."),
        "api_key_ids": (OpenApiTypes.STR, False, "Only these API keys' ids (repeat it, or api_key_ids[])."),
        "line_items": (OpenApiTypes.STR, False, "Only these line items, i.e. models (repeat it, or line_items[])."),
        "batch": (OpenApiTypes.STR, False, "true: batch jobs only (Openbili has none); false: all."),
        "project_ids": (OpenApiTypes.STR, False, "Not supported: an Openbili account has no projects (400)."),
        "user_ids": (OpenApiTypes.STR, False, "Not supported: an Openbili account has no users to filter by (400)."),
    }
    enums = {"bucket_width": tuple(widths), "group_by": groups, "batch": ("true", "false")}
    parameters = []
    for name in names:
        kind, required, description = described[name]
        many = name in openai_shape.LISTS
        parameters.append(
            OpenApiParameter(
                name, kind, required=required, description=description, many=many or None, enum=enums.get(name)
            )
        )
    return parameters


class _OpenAIShaped(AccountScoped, APIView):
    renderer_classes = [openai_shape.ExactJSONRenderer]
    query_class: type[serializers.Serializer]
    page_serializer: type[serializers.Serializer]
    params: tuple[str, ...]

    def groups(self, q: dict) -> list[dict]:
        raise NotImplementedError

    def get(self, request, account_id):
        check_known(request, openai_shape.known_params(self.params))
        query = self.query_class(data=openai_shape.query_data(request, self.params))
        query.is_valid(raise_exception=True)
        q = query.validated_data
        page = openai_shape.page_of(q, self.groups(q) if q["buckets"] else [])
        context = {"group_by": tuple(q.get("group_by", ()))}
        return Response(self.page_serializer(page, context=context).data)

    def aggregate(self, q: dict, *, models) -> list[dict]:
        start, end = openai_shape.range_datetimes(q)
        return selectors.usage_aggregate(
            account_id=self.account.pk,
            start=start,
            end=end,
            bucket=q["unit"],
            group_columns=q["group_columns"],
            models=models,
            api_key_ids=q["api_key_ids"],
        )


@extend_schema(
    tags=["usage"],
    parameters=_openai_parameters(
        openai_shape.COMPLETIONS_PARAMS, openai_shape.COMPLETIONS_WIDTHS, openai_shape.COMPLETIONS_GROUPS
    ),
    responses=openai_shape.CompletionsPageSerializer,
)
class OpenAICompletionsUsageView(_OpenAIShaped):
    """The account's usage in the shape of OpenAI's `GET /v1/organization/usage/completions`:
    time buckets of input, output and cached tokens and request counts, optionally grouped by
    model and API key. Point an OpenAI admin client at …/api/v1/accounts/{id}/ to read it."""

    query_class = openai_shape.CompletionsQuery
    page_serializer = openai_shape.CompletionsPageSerializer
    params = openai_shape.COMPLETIONS_PARAMS

    def groups(self, q: dict) -> list[dict]:
        if q.get("batch") == "true":
            return []  # Openbili runs no batch jobs
        return self.aggregate(q, models=q.get("models"))


@extend_schema(
    tags=["usage"],
    parameters=_openai_parameters(openai_shape.COSTS_PARAMS, openai_shape.COSTS_WIDTHS, openai_shape.COSTS_GROUPS),
    responses=openai_shape.CostsPageSerializer,
)
class OpenAICostsView(_OpenAIShaped):
    """The account's costs in the shape of OpenAI's `GET /v1/organization/costs`: daily buckets of
    amounts `{value, currency: "usd"}`, optionally grouped by line item (model) and API key."""

    query_class = openai_shape.CostsQuery
    page_serializer = openai_shape.CostsPageSerializer
    params = openai_shape.COSTS_PARAMS

    def groups(self, q: dict) -> list[dict]:
        return self.aggregate(q, models=q.get("line_items"))


urlpatterns = [
    path("usage/summary", UsageSummaryView.as_view(), name="api-usage-summary"),
    path("organization/usage/completions", OpenAICompletionsUsageView.as_view(), name="api-openai-usage-completions"),
    path("organization/costs", OpenAICostsView.as_view(), name="api-openai-costs"),
]
