"""The no-secret diagnostic bundle of one usage row (CONTRACT §5).

Built only from columns that hold no secret and no content: the key by its visible prefix, never
its hash; the model by name; the route and its upstream attempts not at all (operators see those
in the admin); no error message either, since an upstream's message may quote the request. What
support needs to find the request in every log is there: request_id and trace_id.
"""

from __future__ import annotations

from datetime import UTC, datetime

from openbili.core.errors import RETRY_ADVICE
from usage.models import UsageRecord

SUCCESS_ADVICE = "The request succeeded: nothing to retry. Support checks its charge against the price snapshot."
PENDING_ADVICE = "The request is still in progress; wait for it to finish."


def _moment(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def retry_advice(row: UsageRecord) -> str:
    """CONTRACT §2.1's advice for the row's error class."""
    if row.error_class:
        return RETRY_ADVICE[row.error_class]
    if row.billing_result == UsageRecord.BillingResult.PENDING:
        return PENDING_ADVICE
    return SUCCESS_ADVICE


def bundle_of(row: UsageRecord) -> dict:
    """The bundle as JSON-ready values (money and moments as strings); the row's price_snapshot
    should be select_related."""
    snapshot = row.price_snapshot
    return {
        "source": "usage",
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "model": row.model_requested,
        "endpoint": row.endpoint,
        "status": row.status,
        "error_class": row.error_class or None,
        "error_code": row.error_code or None,
        "key_prefix": row.key_prefix or None,
        "occurred_at": _moment(row.started_at),
        "retry_advice": retry_advice(row),
        "cost_usd": f"{row.cost_usd:f}",  # plain digits, all 12 places (str() would say 0E-12)
        "billing_result": row.billing_result,
        "price_snapshot": snapshot.as_dict() if snapshot is not None else None,
        "stream": row.stream,
        "tokens_received": row.output_reached_client,
        "client_disconnected_at": _moment(row.client_disconnected_at),
    }
