"""Periodic jobs (Celery beat schedule in settings.CELERY_BEAT_SCHEDULE) and usage exports."""

import logging
from uuid import UUID

import psycopg
from celery import shared_task
from django.db import InterfaceError, OperationalError

from usage import exports, images, partitions, rollup, services

log = logging.getLogger("openbili.exports")

# An export's soft time limit (SoftTimeLimitExceeded: the export fails, saying so) and hard one (the
# worker process is killed; the run lock goes with it). Both under the broker's visibility timeout,
# so a slow export is never handed to a second worker while the first still runs it.
EXPORT_SOFT_TIME_LIMIT = 30 * 60
EXPORT_TIME_LIMIT = EXPORT_SOFT_TIME_LIMIT + 60
DATABASE_DOWN = (OperationalError, InterfaceError, psycopg.OperationalError)


# The periodic jobs: each a thin wrapper over its service, idempotent (a run repeated or run twice
# at once changes nothing more), acks_late, retried with backoff on transient database trouble
# (the next beat tick runs it anyway), and time-limited well under the schedule's next run.
PERIODIC = {"bind": True, "acks_late": True, "max_retries": 3, "soft_time_limit": 240, "time_limit": 300}


def _backoff(task, base: int) -> int:
    return base * 2**task.request.retries


@shared_task(**PERIODIC)
def requests_sweep(self) -> int:
    try:
        return services.requests_sweep()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 5)) from exc


@shared_task(**PERIODIC)
def routes_probe(self) -> int:
    """Probe every active route (network calls; no transaction is open across them)."""
    try:
        return sum(ok for _, ok in services.routes_probe())
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 15)) from exc


@shared_task(**PERIODIC)
def images_expire(self) -> int:
    """Delete expired stored images (files, then rows); idempotent, any number may run at once."""
    try:
        return images.expire_images()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 15)) from exc


@shared_task(**PERIODIC)
def responses_poll(self) -> int:
    """Bill the background responses that finished (upstream calls outside any transaction)."""
    try:
        return services.responses_poll()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 5)) from exc


@shared_task(**PERIODIC)
def usage_rollup(self) -> int:
    """Roll up closed hours of usage for the summaries; idempotent, one run at a time (a lock)."""
    try:
        return rollup.usage_rollup()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 15)) from exc


@shared_task(**PERIODIC)
def usage_partitions(self) -> list[str]:
    """Make the usage table's partitions months ahead (usage/partitions.py); a lock timeout (the
    table busy) is retried, and tomorrow's run makes them anyway."""
    try:
        return partitions.partitions_ensure()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 60)) from exc


@shared_task(
    bind=True,
    name="usage.tasks.export_run",
    acks_late=True,
    max_retries=5,
    soft_time_limit=EXPORT_SOFT_TIME_LIMIT,
    time_limit=EXPORT_TIME_LIMIT,
)
def export_run(self, export_id: str) -> str:
    """Build one usage export's file (usage.exports.export_run: status-guarded, one run at a time).
    Returns the export's status."""
    try:
        return exports.export_run(UUID(export_id)).status
    except exports.ExportBusy:
        # A duplicate of a task another worker is running: that run finishes the job, or its own
        # message (acks_late) is delivered again if it dies. Nothing to do here.
        log.info("export %s: already being built elsewhere; duplicate task dropped", export_id)
        return "busy"
    except DATABASE_DOWN as exc:  # transient: try again with backoff, then give up saying why
        if self.request.is_eager or self.request.retries >= self.max_retries:
            try:
                exports.export_fail(
                    UUID(export_id), reason="The database was unavailable while building the export. Retry it."
                )
            except DATABASE_DOWN:
                log.warning("export %s: could not be marked failed", export_id)
            raise
        raise self.retry(exc=exc, countdown=min(5 * 2**self.request.retries, 300)) from exc


@shared_task(name="usage.tasks.exports_expire", **PERIODIC)
def exports_expire(self) -> int:
    """Expire done exports past their time and delete their files; idempotent, concurrent-safe."""
    try:
        return exports.exports_expire()
    except DATABASE_DOWN as exc:
        raise self.retry(exc=exc, countdown=_backoff(self, 15)) from exc
