"""Task hygiene (issue 13, item 4): every task of the project is acks_late (a worker killed mid-task
leaves it to another) and time-limited, and a transient database error is retried, not lost."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from openbili.celery import app
from usage import services, tasks

PROJECT = ("usage.tasks.", "billing.tasks.")


def project_tasks():
    app.loader.import_default_modules()
    return sorted((name, task) for name, task in app.tasks.items() if name.startswith(PROJECT))


def test_every_task_is_acks_late_and_time_limited():
    found = project_tasks()
    assert {name for name, _ in found} >= {
        "usage.tasks.requests_sweep", "usage.tasks.routes_probe", "usage.tasks.images_expire",
        "usage.tasks.responses_poll", "usage.tasks.usage_rollup", "usage.tasks.export_run",
        "usage.tasks.exports_expire", "billing.tasks.invoices_monthly", "billing.tasks.invoice_build",
        "billing.tasks.ledger_reconcile",
    }  # fmt: skip
    for name, task in found:
        assert task.acks_late, name
        assert task.soft_time_limit and task.time_limit and task.soft_time_limit < task.time_limit, name
        assert task.max_retries, name


@pytest.mark.django_db
def test_a_transient_database_error_is_retried_then_raised(monkeypatch):
    calls = []

    def flaky():
        calls.append(1)
        raise OperationalError("the database restarted")

    monkeypatch.setattr(services, "requests_sweep", flaky)
    result = tasks.requests_sweep.apply()  # eager: each retry runs at once
    assert len(calls) == 1 + tasks.requests_sweep.max_retries
    assert isinstance(result.result, OperationalError)
