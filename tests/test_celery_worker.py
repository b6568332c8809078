"""The real worker of tests/celery_worker.py runs the project's tasks against the test database."""

from __future__ import annotations

from usage import tasks
from usage.models import UsageRollup


def test_a_task_sent_to_the_broker_runs_in_the_worker_process(celery_worker):
    assert not UsageRollup.objects.exists()
    tasks.usage_rollup.delay()  # not eager: through Redis to the worker's own queue
    celery_worker.wait_for(lambda: UsageRollup.objects.exists(), what="the roll-up's watermark row")
    assert "usage.tasks.usage_rollup" in celery_worker.log()
    assert "succeeded" in celery_worker.log()
