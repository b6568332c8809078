"""The Celery app. Workers: `celery -A openbili worker -B`."""

import os
import time

from celery import Celery
from celery.signals import task_failure, task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")

app = Celery("openbili")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _refuse_the_public_key(**kwargs) -> None:
    from openbili.core.checks import require_secret_key

    require_secret_key("to run a worker")


# Every task's run time and failures (openbili_task_seconds, openbili_task_failures): the export,
# invoice and reconciliation jobs' among them. A run is timed from its prerun to its postrun signal,
# in the process that ran it (prefork children write to PROMETHEUS_MULTIPROC_DIR).
_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id=None, **kwargs) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(task_id=None, task=None, state=None, **kwargs) -> None:
    started = _started.pop(task_id, None) if task_id else None
    if started is None or task is None:
        return
    from openbili.ops import metrics

    outcome = (state or "unknown").lower()
    metrics.TASK_SECONDS.labels(task.name, outcome).observe(time.monotonic() - started)


@task_failure.connect
def _task_failed(sender=None, **kwargs) -> None:
    from openbili.ops import metrics

    metrics.TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()
