"""Ticket reads used by other apps' pages."""

from __future__ import annotations

from collections.abc import Iterable

from tickets.models import Ticket


def tickets_by_request(request_ids: Iterable[str]) -> dict[str, Ticket]:
    """request_id → the ticket opened on it, for a page of usage rows: one query (the unique
    index on request_id), only id and status read."""
    ids = list(request_ids)
    if not ids:
        return {}
    return {t.request_id: t for t in Ticket.objects.filter(request_id__in=ids).only("id", "request_id", "status")}
