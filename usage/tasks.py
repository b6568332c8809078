"""Periodic jobs (Celery beat schedule in settings.CELERY_BEAT_SCHEDULE)."""

import psycopg
from celery import shared_task
from django.db import OperationalError

from usage import images, rollup, services


@shared_task(bind=True, acks_late=True, max_retries=3)
def requests_sweep(self) -> int:
    try:
        return services.requests_sweep()
    except (OperationalError, psycopg.OperationalError) as exc:  # transient database trouble: try again soon
        raise self.retry(exc=exc, countdown=10) from exc


@shared_task(acks_late=True)
def routes_probe() -> int:
    return sum(ok for _, ok in services.routes_probe())


@shared_task(bind=True, acks_late=True, max_retries=3)
def images_expire(self) -> int:
    """Delete expired stored images (files, then rows); idempotent, any number may run at once."""
    try:
        return images.expire_images()
    except (OperationalError, psycopg.OperationalError) as exc:  # transient database trouble: try again soon
        raise self.retry(exc=exc, countdown=30) from exc


@shared_task(acks_late=True)
def responses_poll() -> int:
    return services.responses_poll()


@shared_task(bind=True, acks_late=True, max_retries=3)
def usage_rollup(self) -> int:
    """Roll up closed hours of usage for the summaries; idempotent, one run at a time (a lock)."""
    try:
        return rollup.usage_rollup()
    except (OperationalError, psycopg.OperationalError) as exc:  # transient database trouble: try again soon
        raise self.retry(exc=exc, countdown=30) from exc
