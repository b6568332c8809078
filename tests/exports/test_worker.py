"""Usage exports through a real Celery worker process (tests/celery_worker.py), PostgreSQL and
Redis: the job runs in the worker, the files say exactly what the rows say; and a worker killed in
the middle of an export (SIGKILL: no ack, no cleanup) has its task delivered again to a new worker,
whose run finishes the export with one correct file."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from billing import services
from billing.models import Route
from billing.selectors import price_snapshot_current
from tests.celery_worker import VISIBILITY_TIMEOUT
from tests.exports.conftest import (
    T1,
    db_totals,
    files_of,
    make_row,
    read_export,
    storage_settings,
    totals,
    varied_rows,
)
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from usage import exports
from usage.models import UsageExport, UsageRecord


@pytest.fixture
def shared_storage(tmp_path, settings, celery_worker):
    """One exports directory for this process and the worker: the worker is restarted on it."""
    location = tmp_path / "worker-exports"
    settings.STORAGES = storage_settings(location)
    celery_worker.env["OPENBILI_EXPORT_STORAGE_OPTIONS"] = json.dumps({"location": str(location)})
    return location


def restart(worker, **env: str) -> None:
    worker.stop()
    worker.env.update(env)
    worker.start()


def account_with_rows(count: int, *, bulk: bool = False):
    account = AccountFactory(name=f"exports-{count}")
    key, _ = services.key_create(account=account, name="worker key")
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))
    route, snapshot = Route.objects.get(model=model), price_snapshot_current(model)
    if not bulk:
        return account, varied_rows(account, key=key, route=route, snapshot=snapshot, count=count)
    template = varied_rows(account, key=key, route=route, snapshot=snapshot, count=20)
    rows = []
    for i in range(count - len(template)):
        like = template[i % len(template)]
        rows.append(
            UsageRecord(
                **{
                    field.attname: getattr(like, field.attname)
                    for field in UsageRecord._meta.concrete_fields
                    if field.attname not in ("id", "request_id", "trace_id", "started_at", "hold_id")
                },
                request_id=f"req_bulk{i:028d}",
                trace_id=f"trace_bulk{i:026d}",
                started_at=T1 + timedelta(hours=1, seconds=i),
            )
        )
    UsageRecord.objects.bulk_create(rows, batch_size=2000)
    return account, list(UsageRecord.objects.filter(account=account).order_by("started_at", "id"))


def test_an_export_runs_in_the_worker_and_adds_up_to_the_last_digit(celery_worker, shared_storage):
    restart(celery_worker)  # on the shared storage
    account, rows = account_with_rows(60)
    make_row(AccountFactory(name="someone else"), at=T1, cost_usd="9.999999999999")  # never in the file
    for fmt in ("xlsx", "csv"):
        export = exports.export_create(account=account, user=None, format=fmt, filters={})  # queued on commit
        celery_worker.wait_for(
            lambda export=export: UsageExport.objects.get(pk=export.pk).status in ("done", "failed"),
            what=f"the {fmt} export",
        )
        header, got = read_export(export)
        assert header == list(exports.HEADER)
        assert [r["request_id"] for r in got] == [r.request_id for r in rows]
        assert totals(got) == db_totals(UsageRecord.objects.filter(account=account))
        assert export.attempts == 1
    assert "usage.tasks.export_run" in celery_worker.log() and "succeeded" in celery_worker.log()
    assert len(files_of(shared_storage)) == 2


def test_a_worker_killed_mid_export_leaves_a_job_that_the_next_worker_finishes_in_one_file(
    celery_worker, shared_storage
):
    restart(celery_worker, OPENBILI_EXPORT_CHUNK_ROWS="3")  # a slow export: a query and a write per 3 rows
    account, rows = account_with_rows(4000, bulk=True)
    export = exports.export_create(account=account, user=None, format="csv", filters={})

    def current() -> UsageExport:
        return UsageExport.objects.get(pk=export.pk)

    celery_worker.wait_for(lambda: current().rows_done > 0, what="the export to be under way")
    celery_worker.kill()
    killed = current()
    assert killed.status == "running" and 0 < killed.rows_done < len(rows), (killed.status, killed.rows_done)
    assert killed.attempts == 1
    assert exports.export_progress(killed) < 1

    # The killed task is handed out again once unacked for the visibility timeout: a new worker's
    # first sweep (when it starts polling) finds it; kombu's periodic sweeps come only every ~100 s.
    time.sleep(VISIBILITY_TIMEOUT + 1)
    celery_worker.start()
    celery_worker.wait_for(lambda: current().status in ("done", "failed"), what="the retried export", timeout=120)
    finished = current()
    assert finished.status == "done", finished.error
    assert finished.attempts >= 2 and finished.lost_runs == 0
    _, got = read_export(finished)
    assert [r["request_id"] for r in got] == [r.request_id for r in rows]
    assert totals(got) == db_totals(UsageRecord.objects.filter(account=account))
    assert files_of(shared_storage) == [shared_storage / finished.file_name]  # one file, not two
