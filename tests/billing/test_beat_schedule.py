"""Beat's schedule lives in the database (django-celery-beat), seeded from CELERY_BEAT_SCHEDULE:
the sweeper, probes, roll-up, monthly invoices and nightly reconciliation are rows an operator
edits in the admin's "Periodic tasks"; an edit survives beat's restart."""

from __future__ import annotations

import pytest
from django_celery_beat.models import PeriodicTask

from openbili.beat import Scheduler
from openbili.celery import app

pytestmark = pytest.mark.django_db(transaction=True)  # beat closes old connections, as a process would


def test_beat_installs_the_default_schedule_in_the_database_and_keeps_edits():
    Scheduler(app=app, lazy=True).setup_schedule()
    tasks = {task.name: task for task in PeriodicTask.objects.select_related("crontab", "interval")}
    assert {
        "requests-sweep": "usage.tasks.requests_sweep",
        "routes-probe": "usage.tasks.routes_probe",
        "usage-rollup": "usage.tasks.usage_rollup",
        "invoices-monthly": "billing.tasks.invoices_monthly",
        "ledger-reconcile": "billing.tasks.ledger_reconcile",
        "exports-expire": "usage.tasks.exports_expire",
    }.items() <= {name: task.task for name, task in tasks.items()}.items()
    monthly = tasks["invoices-monthly"].crontab
    assert (monthly.minute, monthly.hour, monthly.day_of_month, str(monthly.timezone)) == ("15", "0", "1", "UTC")
    assert tasks["requests-sweep"].interval.every == 60
    # an operator moves the invoices to 01:00 in the admin; beat's next start keeps the edit
    monthly.hour = "1"
    monthly.save()
    Scheduler(app=app, lazy=True).setup_schedule()
    assert PeriodicTask.objects.get(name="invoices-monthly").crontab.hour == "1"
