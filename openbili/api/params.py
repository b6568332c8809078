"""Query parameters: a parameter a list does not know is a 400 naming it, never silently ignored
(a misspelt filter would otherwise return everything)."""

from __future__ import annotations

from rest_framework import exceptions

PAGING = frozenset({"cursor", "page_size"})


def check_known(request, known: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(request.query_params) - set(known) - PAGING)
    if unknown:
        raise exceptions.ValidationError({name: ["Unknown parameter."] for name in unknown})
