"""The usage page's filters. A value that does not parse (a date that is not ISO 8601, a status
that is not a number, an error_class that does not exist, a stream that is not true/false) is a
400 naming the parameter, never silently ignored."""

from __future__ import annotations

import django_filters
from django import forms

from openbili.api.params import UtcDateTimeFilter
from usage.models import UsageRecord


class IntegerFilter(django_filters.Filter):
    field_class = forms.IntegerField


class StrictBooleanFilter(django_filters.TypedChoiceFilter):
    """`true` or `false`: django-filter's BooleanFilter reads anything else as 'no filter'."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("choices", (("true", "true"), ("false", "false")))
        kwargs.setdefault("coerce", lambda value: value == "true")
        super().__init__(*args, **kwargs)


class UsageFilter(django_filters.FilterSet):
    started_after = UtcDateTimeFilter(
        field_name="started_at", lookup_expr="gte", label="Rows started at or after this time (ISO 8601)."
    )
    started_before = UtcDateTimeFilter(
        field_name="started_at", lookup_expr="lt", label="Rows started before this time (ISO 8601)."
    )
    model = django_filters.CharFilter(field_name="model_requested", label="The model the client asked for.")
    api_key = IntegerFilter(field_name="api_key_id", min_value=1, label="An API key's id.")
    key_prefix = django_filters.CharFilter(label="An API key's non-secret prefix (sk-ob-…).")
    endpoint = django_filters.CharFilter(label="e.g. /v1/chat/completions")
    status = IntegerFilter(min_value=100, max_value=599, label="The HTTP status sent to the client.")
    error_class = django_filters.ChoiceFilter(choices=UsageRecord.ErrorClass.choices, method="filter_error_class")
    error_code = django_filters.CharFilter(method="filter_error_code", label="e.g. rate_limit_exceeded")
    billing_result = django_filters.ChoiceFilter(choices=UsageRecord.BillingResult.choices)
    stream = StrictBooleanFilter(label="true or false.")
    request_id = django_filters.CharFilter(label="req_…")
    trace_id = django_filters.CharFilter(label="trace_…")

    class Meta:
        model = UsageRecord
        fields: list[str] = []

    # A failing row always has both error_class and error_code (the gateway writes them together):
    # saying so lets PostgreSQL use the small partial index of failing rows (usage_account_error_time).
    def filter_error_class(self, queryset, name, value):
        return queryset.filter(error_class=value).exclude(error_class="")

    def filter_error_code(self, queryset, name, value):
        return queryset.filter(error_code=value).exclude(error_class="")


USAGE_FILTERS = frozenset(UsageFilter.base_filters)
