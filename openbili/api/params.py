"""Query parameters: a parameter a list does not know is a 400 naming it, never silently ignored
(a misspelt filter would otherwise return everything)."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField
from rest_framework import exceptions

PAGING = frozenset({"cursor", "page_size"})


def check_known(request, known: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(request.query_params) - set(known) - PAGING)
    if unknown:
        raise exceptions.ValidationError({name: ["Unknown parameter."] for name in unknown})


class UtcDateTimeField(IsoDateTimeField):
    """ISO 8601, sent to PostgreSQL in UTC: Python accepts offsets up to ±23:59 and PostgreSQL only
    to ±15:59, and an instant that leaves Python's years 1..9999 in UTC is out of range, not a 500."""

    def to_python(self, value):
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Out of range.", code="overflow") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """The time filter of every list (ledger, usage): see UtcDateTimeField."""

    field_class = UtcDateTimeField
