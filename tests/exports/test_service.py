"""Usage exports, service level (usage/exports.py): the files say exactly what the rows say —
every cell, every total to the last digit, only the account's rows, never a secret — through
every filter, in chunks; runs are idempotent and one at a time; failures say why and retry into
one file; files expire."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from celery.exceptions import Retry
from django.core.files.storage import storages
from django.core.management import call_command
from django.db import OperationalError, connection
from django.utils import timezone

from billing.models import Route
from tests.exports.conftest import (
    T1,
    Dataset,
    as_text,
    db_totals,
    expected,
    files_of,
    iso,
    read_csv,
    read_export,
    totals,
    varied_rows,
    xlsx_xml,
)
from usage import exports, tasks
from usage.models import UsageExport, UsageRecord

pytestmark = pytest.mark.django_db


def run(dataset: Dataset, fmt: str = "csv", **filters) -> UsageExport:
    export = exports.export_create(account=dataset.owner.account, user=dataset.owner.user, format=fmt, filters=filters)
    return exports.export_run(export.pk)


def file_bytes(export: UsageExport) -> bytes:
    export.refresh_from_db()
    with storages["openbili_exports"].open(export.file_name, "rb") as handle:
        return handle.read()


def route_names() -> dict[int, str]:
    return dict(Route.objects.values_list("pk", "name"))


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_every_cell_and_every_total_matches_the_rows_of_the_account_only(dataset, export_dir, fmt):
    export = run(dataset, fmt)

    header, rows = read_export(export)
    assert header == list(exports.HEADER)
    names = route_names()
    want = [expected(row, names) for row in dataset.rows]  # oldest first, as the file
    if fmt == "csv":
        want = [{name: as_text(value) for name, value in row.items()} for row in want]
    else:  # XLSX has no empty text: an empty cell
        want = [{name: None if value == "" else value for name, value in row.items()} for row in want]
    assert rows == want
    assert {r["request_id"] for r in rows}.isdisjoint({r.request_id for r in dataset.other_rows})

    mine = UsageRecord.objects.filter(account=dataset.owner.account)
    assert totals(rows) == db_totals(mine)
    assert totals(rows)["cost_usd"] == sum((r.cost_usd for r in mine), Decimal(0))  # to the last digit
    assert export.rows_done == export.rows_total == len(dataset.rows) == 40
    assert exports.export_progress(export) == 1.0
    assert export.attempts == 1 and export.error == ""
    assert export.file_name == f"exports/{dataset.owner.account.pk}/{export.pk}.{fmt}"
    assert export.expires_at == export.finished_at + timedelta(days=7)
    assert files_of(export_dir) == [export_dir / export.file_name]


def test_money_keeps_all_twelve_places_and_formulas_stay_text(dataset, export_dir):
    tricky = varied_rows(
        dataset.owner.account, key=dataset.key, route=dataset.route, snapshot=dataset.snapshot, count=1
    )[0]
    UsageRecord.objects.filter(pk=tricky.pk).update(
        cost_usd=Decimal("123456789012.000000000001"),
        model_requested='=HYPERLINK("http://evil.example/","x")',
        error_message="@SUM(1+1)\x01 -not a formula",
        error_code="#N/A",
    )
    csv_export, xlsx_export = run(dataset, "csv"), run(dataset, "xlsx")

    _, csv_rows = read_export(csv_export)
    row = next(r for r in csv_rows if r["request_id"] == tricky.request_id)
    assert row["cost_usd"] == "123456789012.000000000001"
    assert row["model"] == '\'=HYPERLINK("http://evil.example/","x")'  # neutralised for spreadsheets
    assert row["error_message"] == "'@SUM(1+1)\x01 -not a formula"

    _, xlsx_rows = read_export(xlsx_export)
    row = next(r for r in xlsx_rows if r["request_id"] == tricky.request_id)
    assert row["cost_usd"] == "123456789012.000000000001"  # text: a float would have lost digits
    assert row["model"] == '=HYPERLINK("http://evil.example/","x")'  # a text cell, not a formula:
    assert b"<f>" not in xlsx_xml(file_bytes(xlsx_export))
    assert row["error_message"] == "@SUM(1+1)\ufffd -not a formula"  # a sheet cannot hold \x01
    assert row["error_code"] == "#N/A"  # text, not Excel's error value


def test_no_secret_key_hash_or_upstream_secret_in_either_file(dataset, export_dir):
    for fmt in ("csv", "xlsx"):
        data = file_bytes(run(dataset, fmt))
        content = xlsx_xml(data) if fmt == "xlsx" else data
        assert dataset.key.prefix.encode() in content
        for secret in (dataset.secret, dataset.key.key_hash, "upstream-test-secret", dataset.route.base_url):
            assert secret.encode() not in content, secret


FILTERS = [
    ({}, lambda r: True),
    ({"model": "claude-sonnet-4-6"}, lambda r: r.model_requested == "claude-sonnet-4-6"),
    ({"endpoint": "/v1/messages"}, lambda r: r.endpoint == "/v1/messages"),
    ({"status": "429"}, lambda r: r.status == 429),
    ({"error_class": "stream_interrupted"}, lambda r: r.error_class == "stream_interrupted"),
    ({"error_code": "rate_limit_exceeded"}, lambda r: r.error_code == "rate_limit_exceeded"),
    ({"billing_result": "failed_but_billable"}, lambda r: r.billing_result == "failed_but_billable"),
    ({"stream": "true"}, lambda r: r.stream),
    ({"stream": "false"}, lambda r: not r.stream),
    ({"started_after": iso(T1 + timedelta(minutes=10))}, lambda r: r.started_at >= T1 + timedelta(minutes=10)),
    ({"started_before": iso(T1 + timedelta(minutes=10))}, lambda r: r.started_at < T1 + timedelta(minutes=10)),
    (
        {"started_after": iso(T1 + timedelta(minutes=5)), "started_before": iso(T1 + timedelta(minutes=25))},
        lambda r: T1 + timedelta(minutes=5) <= r.started_at < T1 + timedelta(minutes=25),
    ),
    (
        {"model": "gpt-5", "stream": "true", "billing_result": "billed"},
        lambda r: r.model_requested == "gpt-5" and r.stream and r.billing_result == "billed",
    ),
]


@pytest.mark.parametrize(("filters", "keep"), FILTERS, ids=[str(f) or "none" for f, _ in FILTERS])
def test_each_filter_exports_what_the_usage_page_shows(dataset, export_dir, filters, keep):
    export = run(dataset, "csv", **filters)
    _, rows = read_export(export)
    wanted = [r for r in dataset.rows if keep(r)]
    assert wanted, "a filter that matches nothing proves little"
    assert [r["request_id"] for r in rows] == [r.request_id for r in wanted]
    assert totals(rows) == db_totals(UsageRecord.objects.filter(pk__in=[r.pk for r in wanted]))
    # the usage page, with the same filters, lists the same rows
    page = dataset.owner.client.get(dataset.owner.url("/usage"), filters | {"page_size": 200})
    assert page.status_code == 200, page.content
    assert sorted(r["request_id"] for r in page.json()["results"]) == sorted(r["request_id"] for r in rows)


def test_key_filters_and_a_key_of_another_account(dataset, export_dir):
    with_key = [r for r in dataset.rows if r.api_key_id == dataset.key.pk]
    for filters in ({"api_key": str(dataset.key.pk)}, {"key_prefix": dataset.key.prefix}):
        _, rows = read_export(run(dataset, "csv", **filters))
        assert [r["request_id"] for r in rows] == [r.request_id for r in with_key]
    _, rows = read_export(run(dataset, "csv", api_key=str(dataset.other_key.pk)))
    assert rows == []  # another account's key: none of its rows, whoever's they are
    one = dataset.rows[7]
    for filters in ({"request_id": one.request_id}, {"trace_id": one.trace_id}):
        _, rows = read_export(run(dataset, "csv", **filters))
        assert [r["request_id"] for r in rows] == [one.request_id]


def test_the_range_end_is_frozen_at_creation(dataset, export_dir):
    export = exports.export_create(
        account=dataset.owner.account, user=None, format="csv", filters={"started_before": "2999-01-01T00:00:00Z"}
    )
    assert export.filters == {"started_before": iso(export.created_at)}
    varied_rows(  # arrives after the export was created: not in it, nor in a retry of it
        dataset.owner.account, key=None, route=dataset.route, snapshot=None, count=2, start=timezone.now()
    )
    _, rows = read_export(exports.export_run(export.pk))
    assert len(rows) == len(dataset.rows)


@pytest.mark.parametrize(
    ("fmt", "filters", "fields"),
    [
        ("pdf", {}, {"format"}),
        ("csv", {"started_after": "yesterday"}, {"started_after"}),
        ("csv", {"started_before": "2026-13-01T00:00:00Z"}, {"started_before"}),
        ("csv", {"status": "two hundred"}, {"status"}),
        ("csv", {"error_class": "bad_luck"}, {"error_class"}),
        ("csv", {"stream": "maybe"}, {"stream"}),
        ("csv", {"colour": "blue", "model": "gpt-5"}, {"colour"}),
        ("csv", {"started_after": iso(T1), "started_before": iso(T1)}, {"started_after"}),
    ],
)
def test_invalid_parameters_name_their_field_and_create_nothing(dataset, fmt, filters, fields):
    with pytest.raises(exports.InvalidExport) as raised:
        exports.export_create(account=dataset.owner.account, user=None, format=fmt, filters=filters)
    assert set(raised.value.fields) == fields
    assert not UsageExport.objects.exists()


def test_chunks_give_the_same_file_and_report_progress_each_chunk(dataset, export_dir, monkeypatch):
    whole = file_bytes(run(dataset, "csv"))
    progress: list[int] = []
    write = exports._Run.write

    def recording(self, **fields):
        if "rows_done" in fields and "status" not in fields:
            progress.append(fields["rows_done"])
        return write(self, **fields)

    monkeypatch.setattr(exports, "CHUNK_ROWS", 7)
    monkeypatch.setattr(exports._Run, "write", recording)
    chunked = run(dataset, "csv")
    assert file_bytes(chunked) == whole
    assert progress == [7, 14, 21, 28, 35, 40]  # 40 rows, 7 at a time
    assert chunked.rows_done == 40


def test_progress_is_visible_while_it_runs(dataset, export_dir, monkeypatch):
    seen: list[tuple[str, float]] = []
    write = exports._Run.write

    def watching(self, **fields):
        write(self, **fields)
        current = UsageExport.objects.get(pk=self.export.pk)
        seen.append((current.status, exports.export_progress(current)))

    monkeypatch.setattr(exports, "CHUNK_ROWS", 10)
    monkeypatch.setattr(exports._Run, "write", watching)
    run(dataset, "xlsx")
    running = [p for status, p in seen if status == "running"]
    assert running == sorted(running) and 0 < running[1] < running[-1] < 1
    assert seen[-1] == ("done", 1.0)


def test_running_it_again_changes_nothing(dataset, export_dir):
    export = run(dataset, "xlsx")
    first = file_bytes(export)
    again = exports.export_run(export.pk)
    assert again.status == "done" and again.attempts == 1 and again.finished_at == export.finished_at
    assert file_bytes(again) == first
    assert files_of(export_dir) == [export_dir / export.file_name]


def test_a_storage_failure_fails_the_export_with_a_reason_and_a_retry_builds_one_file(
    dataset, export_dir, monkeypatch, django_capture_on_commit_callbacks
):
    storage = storages["openbili_exports"]
    save = storage.save
    calls = []

    def flaky(name, content, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("connection reset by storage.internal:9000 (key=AKIA…)")
        return save(name, content, **kwargs)

    monkeypatch.setattr(storage, "save", flaky)
    failed = run(dataset, "csv")
    assert failed.status == "failed"
    assert failed.error == "The file could not be saved to storage. Retry the export."  # no host, no key
    assert failed.file_name == "" and files_of(export_dir) == []
    assert exports.export_progress(failed) == 0.0

    with django_capture_on_commit_callbacks(execute=True) as queued:  # eager: the job runs in-process
        retried = exports.export_retry(export=failed)
    assert retried.status == "queued" and retried.error == "" and len(queued) == 1
    _, rows = read_export(retried)
    assert [r["request_id"] for r in rows] == [r.request_id for r in dataset.rows]
    retried.refresh_from_db()
    assert retried.attempts == 2
    assert files_of(export_dir) == [export_dir / retried.file_name]


def test_only_failed_expired_or_dead_runs_can_be_retried(dataset, export_dir):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    with pytest.raises(exports.ExportConflict):
        exports.export_retry(export=export)  # queued
    exports.export_run(export.pk)
    with pytest.raises(exports.ExportConflict):
        exports.export_retry(export=export)  # done
    UsageExport.objects.filter(pk=export.pk).update(status="running", file_name="", expires_at=None)
    assert exports.export_retry(export=export).status == "queued"  # running, but no run holds it


def other_session():
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"], user=db["USER"] or "postgres", host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip


def wait_until_free(key1: int, key2: int) -> None:
    """A closed session's backend exits, and drops its advisory locks, a moment after the client
    hangs up; wait for that lock to be free (not for a fixed time, and not for the backend's pid,
    which a busy server may hand to a new backend meanwhile)."""
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
                " AND objid = %s::bigint::oid AND objsubid = 2",
                [key1 % 2**32, key2 % 2**32],
            )
            if cursor.fetchone() is None:
                return
            time.sleep(0.01)
    raise AssertionError(f"advisory lock ({key1}, {key2}) still held after its session closed")


def test_a_live_run_elsewhere_keeps_the_export_and_refuses_a_retry(dataset, export_dir):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    UsageExport.objects.filter(pk=export.pk).update(status="running")
    with other_session() as elsewhere:  # another worker's run holds the export's lock
        elsewhere.execute("SELECT pg_advisory_lock(%s, %s)", [exports.RUN_LOCK, exports._lock_key(export.pk)])
        with pytest.raises(exports.ExportBusy):
            exports.export_run(export.pk)
        with pytest.raises(exports.ExportConflict):
            exports.export_retry(export=export)
        assert UsageExport.objects.get(pk=export.pk).attempts == 0
    wait_until_free(exports.RUN_LOCK, exports._lock_key(export.pk))
    # that worker died: its lock went with its session, and a redelivered task finishes the job
    done = exports.export_run(export.pk)
    assert done.status == "done" and done.attempts == 1 and done.lost_runs == 0


def test_runs_that_keep_dying_fail_the_export_instead_of_looping(dataset, export_dir):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    UsageExport.objects.filter(pk=export.pk).update(status="running", lost_runs=exports.MAX_LOST_RUNS, attempts=4)
    gave_up = exports.export_run(export.pk)
    assert gave_up.status == "failed" and "stopped 4 times" in gave_up.error
    assert exports.export_retry(export=gave_up).lost_runs == 0


def test_at_most_five_active_exports_per_account(dataset):
    for _ in range(exports.MAX_ACTIVE):
        exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    with pytest.raises(exports.TooManyExports) as raised:
        exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    assert raised.value.retry_after == 30
    exports.export_create(account=dataset.other.account, user=None, format="csv", filters={})  # another account


def test_expiry_deletes_the_file_and_marks_the_export_expired(dataset, export_dir):
    old, fresh = run(dataset, "csv"), run(dataset, "xlsx")
    UsageExport.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert exports.exports_expire() == 1
    assert exports.exports_expire() == 0  # idempotent
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert (old.status, old.file_name, old.size_bytes) == ("expired", "", None)
    assert fresh.status == "done"
    assert files_of(export_dir) == [export_dir / fresh.file_name]
    with pytest.raises(exports.ExportGone):
        exports.export_file(old)
    # built again on request: the same rows, one file
    exports.export_retry(export=old)
    _, rows = read_export(exports.export_run(old.pk))
    assert len(rows) == len(dataset.rows)
    assert len(files_of(export_dir)) == 2


def test_a_file_that_fails_to_delete_is_kept_for_the_next_sweep(dataset, export_dir, monkeypatch):
    export = run(dataset, "csv")
    UsageExport.objects.filter(pk=export.pk).update(expires_at=timezone.now())
    storage = storages["openbili_exports"]
    delete = storage.delete
    monkeypatch.setattr(storage, "delete", lambda name: (_ for _ in ()).throw(OSError("storage down")))
    assert exports.exports_expire() == 0
    export.refresh_from_db()
    assert export.status == "expired" and export.file_name  # marked, file kept for the next run
    monkeypatch.setattr(storage, "delete", delete)
    assert exports.exports_expire() == 1
    assert files_of(export_dir) == []


def test_export_file_refuses_before_done(dataset, export_dir):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    with pytest.raises(exports.ExportNotReady):
        exports.export_file(export)
    found = exports.export_file(exports.export_run(export.pk))
    with found.file:
        assert read_csv(found.file.read())[0] == list(exports.HEADER)
    assert found.content_type == "text/csv; charset=utf-8"
    assert found.filename.startswith(f"openbili-usage-{dataset.owner.account.pk}-") and found.filename.endswith(".csv")


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_memory_stays_flat_as_rows_grow(dataset, export_dir, monkeypatch, fmt):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 50)
    big = varied_rows(dataset.other.account, key=None, route=dataset.route, snapshot=dataset.snapshot, count=1500)

    def peak(account, **filters) -> int:
        export = exports.export_create(account=account, user=None, format=fmt, filters=filters)
        tracemalloc.start()
        try:
            exports.export_run(export.pk)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak(dataset.other.account, started_before=iso(big[99].started_at))  # the first 100 rows
    large = peak(dataset.other.account)  # 15 times as many
    assert large < small * 1.5 + 256 * 1024, (small, large)
    assert UsageExport.objects.latest("created_at").rows_done == 1512


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_one_export_write_one_correct_file(dataset, export_dir, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 5)
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def duplicate() -> None:
        try:
            start.wait()
            outcomes.append(exports.export_run(export.pk).status)
        except exports.ExportBusy:
            outcomes.append("busy")
        finally:
            connection.close()

    threads = [threading.Thread(target=duplicate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) in (["busy", "done"], ["done", "done"])
    export.refresh_from_db()
    assert export.attempts == 1  # one run built it
    _, rows = read_export(export)
    assert [r["request_id"] for r in rows] == [r.request_id for r in dataset.rows]
    assert files_of(export_dir) == [export_dir / export.file_name]


def test_rows_sharing_an_instant_across_chunks_are_each_written_once_in_id_order(dataset, export_dir, monkeypatch):
    same = T1 + timedelta(days=1)
    tied = [
        varied_rows(dataset.owner.account, key=None, route=dataset.route, snapshot=None, count=1, start=same)[0]
        for _ in range(8)
    ]
    monkeypatch.setattr(exports, "CHUNK_ROWS", 3)  # the 8 tied rows straddle three chunk boundaries
    _, rows = read_export(run(dataset, "csv"))
    assert [r["request_id"] for r in rows] == [r.request_id for r in dataset.rows + tied]
    monkeypatch.setattr(exports, "CHUNK_ROWS", 1)
    _, rows = read_export(run(dataset, "csv"))
    assert [r["request_id"] for r in rows] == [r.request_id for r in dataset.rows + tied]


# --- the Celery tasks: thin wrappers ------------------------------------------------------------


def test_the_task_runs_the_service_and_drops_a_duplicate(dataset, export_dir, monkeypatch):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    assert tasks.export_run.apply(args=[str(export.pk)]).get() == "done"  # eager, as without a broker
    assert tasks.export_run.apply(args=[str(export.pk)]).get() == "done"  # again: nothing to do
    assert UsageExport.objects.get(pk=export.pk).attempts == 1

    def busy(export_id):
        raise exports.ExportBusy(str(export_id))

    monkeypatch.setattr(exports, "export_run", busy)
    assert tasks.export_run.apply(args=[str(export.pk)]).get() == "busy"


def test_the_task_retries_database_errors_with_backoff_then_fails_the_export(dataset, monkeypatch):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})

    def database_down(export_id):
        raise OperationalError("connection refused")

    countdowns: list[int] = []
    monkeypatch.setattr(exports, "export_run", database_down)
    monkeypatch.setattr(tasks.export_run, "retry", lambda exc, countdown: countdowns.append(countdown) or Retry())
    for attempt in range(tasks.export_run.max_retries):
        tasks.export_run.push_request(retries=attempt, is_eager=False)
        try:
            with pytest.raises(Retry):
                tasks.export_run.run(str(export.pk))
        finally:
            tasks.export_run.pop_request()
    assert countdowns == [5, 10, 20, 40, 80]
    assert UsageExport.objects.get(pk=export.pk).status == "queued"  # still to be done
    tasks.export_run.push_request(retries=tasks.export_run.max_retries, is_eager=False)
    try:
        with pytest.raises(OperationalError):
            tasks.export_run.run(str(export.pk))
    finally:
        tasks.export_run.pop_request()
    export.refresh_from_db()
    assert export.status == "failed" and export.error.startswith("The database was unavailable")


def test_the_expiry_task_and_command(dataset, export_dir):
    export = run(dataset, "csv")
    UsageExport.objects.filter(pk=export.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    out = io.StringIO()
    call_command("exports_expire", stdout=out)
    assert out.getvalue().strip() == "1 expired export file(s) deleted"
    assert tasks.exports_expire.apply().get() == 0
    assert UsageExport.objects.get(pk=export.pk).status == "expired"


def test_more_rows_than_an_xlsx_sheet_holds_fail_saying_so(dataset, export_dir, monkeypatch):
    monkeypatch.setattr(exports.XlsxRenderer, "MAX_ROWS", 39)  # the dataset has 40
    failed = run(dataset, "xlsx")
    assert failed.status == "failed" and "export CSV" in failed.error and files_of(export_dir) == []
    monkeypatch.setattr(exports.XlsxRenderer, "MAX_ROWS", 40)
    assert run(dataset, "xlsx").status == "done"
