"""Billing's Celery tasks (beat schedule in the database: django-celery-beat). Each is a thin
wrapper over a service; ids in, idempotent, retried on transient database errors with backoff."""

from __future__ import annotations

import logging

import psycopg
from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from billing import invoices, reconcile
from billing.models import Account
from openbili.ops import metrics

log = logging.getLogger("openbili.billing")
TRANSIENT = (OperationalError, psycopg.OperationalError)


@shared_task(bind=True, acks_late=True, max_retries=5, soft_time_limit=1800, time_limit=1900)
def invoices_monthly(self, month: str | None = None) -> int:
    """On the 1st (UTC): one invoice_build task per account with entries, for the month before."""
    try:
        start = invoices.parse_month(month) if month else None
        start = start or invoices.previous_month(invoices.month_start(timezone.now()))
        ids = list(invoices.accounts_to_invoice(start).values_list("pk", flat=True))
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=60 * 2**self.request.retries) from exc
    for account_id in ids:
        invoice_build.delay(account_id, f"{start:%Y-%m}")
    return len(ids)


@shared_task(bind=True, acks_late=True, max_retries=5, soft_time_limit=1800, time_limit=1900)
def invoice_build(self, account_id: int, month: str) -> str:
    """One account's invoice for one month; a repeat returns the invoice that exists."""
    try:
        built = invoices.invoice_build(account=Account.objects.get(pk=account_id), month=invoices.parse_month(month))
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from exc
    return built.invoice.number


@shared_task(bind=True, acks_late=True, max_retries=3, soft_time_limit=3000, time_limit=3100)
def ledger_reconcile(self) -> int:
    """Nightly: every difference is logged as an error (alert on it); returns how many."""
    try:
        differences = reconcile.reconcile()
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=300) from exc
    for difference in differences:
        log.error("reconcile: %s", difference)
    metrics.record_reconcile(len(differences))
    return len(differences)
