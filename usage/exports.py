"""Usage exports (CONTRACT §6): an account's usage rows as an XLSX or CSV file, built by a Celery
job with status and progress, downloadable by the account's members until it expires.

- `export_create` validates the usage page's filters (usage/api/filters.py: the export applies the
  same FilterSet, so the page and its export never disagree), freezes the end of the time range
  (at most now: a retry writes the same rows) and queues `usage.tasks.export_run` on commit. An
  account has at most `MAX_ACTIVE` exports queued or running at once.
- `export_run` streams the rows oldest first (by started_at, then id) by keyset pagination, one
  query of about `CHUNK_ROWS` rows at a time, outside any transaction, into a local temporary file
  (openpyxl's write-only workbook or the csv module: memory stays flat however many rows), writes
  its progress after every chunk, then saves the file to the `openbili_exports` storage under its
  one name, `exports/<account>/<id>.<format>`, and marks the export done. No transaction is open
  while the file is written to storage.
- One run at a time per export, whatever the broker delivers: a run holds a PostgreSQL session
  advisory lock on the export for its whole life, and claims the export (queued, or running with
  no live run: its worker died) with a new `run_token` that every later write is conditional on.
  A duplicated task finds the lock held and leaves; a task redelivered after its worker was killed
  finds the lock free (PostgreSQL dropped it with the dead session) and runs again, replacing the
  file. Runs that die `MAX_LOST_RUNS` times in a row fail the export instead of looping. (A
  session lock needs a session: behind PgBouncer, workers connect in session pooling mode.)
- A failing run marks the export failed with a reason meant for the customer (never an exception's
  text, which may name paths or hosts); `export_retry` queues a failed or expired export again.
- `exports_expire` (beat, `manage.py exports_expire`) marks done exports past `expires_at` expired
  and deletes their files.

Columns are what the usage API shows of a row (usage/api/serializers.py), flattened, never a key's
hash, a secret or prompt text. Money and prices are exact decimal strings (all 12 places of a cost)
in both formats: an XLSX number is a binary float, which would lose digits. Times are ISO 8601 UTC.
A text cell that a spreadsheet would run as a formula is written as text: in XLSX as a string
cell; in CSV prefixed with an apostrophe (OWASP's advice for CSV injection). XLSX has no empty
text (an empty cell) nor control characters (U+FFFD instead), and at most 1,048,575 rows a sheet:
a larger XLSX export fails saying so (CSV has no limit).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE

from billing import money
from billing.models import Account
from openbili.core.errors import InvalidRequest, OpenbiliError
from usage import selectors

# The usage page's FilterSet is the one definition of what a usage filter means; the export applies
# it to the same selector, in the worker, from the filters stored on the export.
from usage.api.filters import USAGE_FILTERS, UsageFilter
from usage.models import UsageExport, UsageRecord

log = logging.getLogger("openbili.exports")

STORAGE_ALIAS = "openbili_exports"
# Rows per query and per progress write. OPENBILI_EXPORT_CHUNK_ROWS is for tests and tuning: the
# crash test makes an export slow enough to kill a worker in the middle of it.
CHUNK_ROWS = int(os.environ.get("OPENBILI_EXPORT_CHUNK_ROWS", "2000"))
MAX_ACTIVE = 5  # exports queued or running per account
MAX_LOST_RUNS = 3  # runs in a row that died (a killed worker) before the export fails
EXPIRE_BATCH = 200
# Advisory lock classes (pg_advisory_lock(class, key), the two-int form): one run of an export at
# a time (key: the export id's first 32 bits; a collision only delays a run); one create or retry
# per account at a time, so the MAX_ACTIVE count cannot be raced.
RUN_LOCK = 0x0B1_E701
ACCOUNT_LOCK = 0x0B1_E702

TRANSIENT = (OperationalError, InterfaceError)  # the database went away: the task retries
CONTENT_TYPES: dict[str, str] = {
    UsageExport.Format.CSV: "text/csv; charset=utf-8",
    UsageExport.Format.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
ACTIVE = (UsageExport.Status.QUEUED, UsageExport.Status.RUNNING)


# --- errors -------------------------------------------------------------------------------------


class InvalidExport(InvalidRequest):
    """Bad parameters: `fields` maps each to what is wrong with it."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("Invalid export parameters: " + ", ".join(sorted(fields)) + ".", param=next(iter(fields)))
        self.fields = fields


class TooManyExports(OpenbiliError):
    status = 429
    code = "too_many_exports"
    error_class = "quota_or_rate_limit"
    openai_type = "rate_limit_error"
    message = f"At most {MAX_ACTIVE} exports of an account may be queued or running at once: wait for one to finish."


class ExportConflict(OpenbiliError):
    status = 409
    code = "export_not_retryable"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "Only a failed or expired export (or one whose run died) can be retried."


class ExportNotReady(OpenbiliError):
    status = 409
    code = "export_not_ready"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "The export's file is not ready: see its status."


class ExportGone(OpenbiliError):
    status = 410
    code = "export_expired"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "The export's file has expired and was deleted: retry the export to build it again."


class ExportBusy(Exception):
    """Another live run holds the export (a duplicated task): it will finish the job."""


class _RunLost(Exception):
    """The export is no longer this run's (retried or expired meanwhile): stop, write nothing."""


class _StorageFailed(Exception):
    pass


# --- columns ------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


def _money(amount: Decimal) -> str:
    return f"{money.quantize_cost(amount):f}"  # all 12 places, plain digits (never 0E-12)


def _price(row: UsageRecord, field: str) -> str | None:
    snapshot = row.price_snapshot
    return None if snapshot is None else f"{getattr(snapshot, field):f}"


def _attempts(row: UsageRecord) -> list[dict]:
    return [a for a in row.attempts if isinstance(a, dict)] if isinstance(row.attempts, list) else []


Value = str | int | bool | None
Getter = Callable[[UsageRecord, Mapping[int, str]], Value]

# (header, value) in file order; the same in XLSX and CSV. Every field the usage API shows of a row
# except its ticket; never key_hash, user_agent or anything a client sent as content.
COLUMNS: tuple[tuple[str, Getter], ...] = (
    ("request_id", lambda r, _: r.request_id),
    ("trace_id", lambda r, _: r.trace_id),
    ("started_at", lambda r, _: _iso(r.started_at)),
    ("first_byte_at", lambda r, _: _iso(r.first_byte_at)),
    ("finished_at", lambda r, _: _iso(r.finished_at)),
    ("time_to_first_byte_ms", lambda r, _: _ms(r.started_at, r.first_byte_at)),
    ("duration_ms", lambda r, _: _ms(r.started_at, r.finished_at)),
    ("api_key", lambda r, _: r.api_key_id),
    ("key_prefix", lambda r, _: r.key_prefix),
    ("endpoint", lambda r, _: r.endpoint),
    ("model", lambda r, _: r.model_requested),
    ("provider", lambda r, _: r.provider),
    ("upstream_model", lambda r, _: r.upstream_model),
    ("route", lambda r, names: names.get(r.route_id) if r.route_id is not None else None),
    ("attempts", lambda r, _: len(_attempts(r))),
    (
        "attempt_routes",
        lambda r, names: " > ".join(names.get(a.get("route_id"), "?") for a in _attempts(r)),  # type: ignore[arg-type]
    ),
    ("stream", lambda r, _: r.stream),
    ("status", lambda r, _: r.status),
    ("error_class", lambda r, _: r.error_class),
    ("error_code", lambda r, _: r.error_code),
    ("error_message", lambda r, _: r.error_message),
    ("billing_result", lambda r, _: r.billing_result),
    ("output_reached_client", lambda r, _: r.output_reached_client),
    ("client_disconnected_at", lambda r, _: _iso(r.client_disconnected_at)),
    ("input_tokens", lambda r, _: r.input_tokens),
    ("output_tokens", lambda r, _: r.output_tokens),
    ("cached_input_tokens", lambda r, _: r.cached_input_tokens),
    ("cache_write_tokens", lambda r, _: r.cache_write_tokens),
    ("reasoning_tokens", lambda r, _: r.reasoning_tokens),
    ("image_count", lambda r, _: r.image_count),
    ("tokens_estimated", lambda r, _: r.tokens_estimated),
    ("max_tokens_requested", lambda r, _: r.max_tokens_requested),
    ("max_tokens_applied", lambda r, _: r.max_tokens_applied),
    ("cost_usd", lambda r, _: _money(r.cost_usd)),
    ("uncharged_usd", lambda r, _: _money(r.uncharged_usd)),
    ("price_snapshot_id", lambda r, _: r.price_snapshot_id),
    ("price_model", lambda r, _: r.price_snapshot.model_name if r.price_snapshot else None),
    ("price_currency", lambda r, _: r.price_snapshot.currency if r.price_snapshot else None),
    ("price_input_per_mtok", lambda r, _: _price(r, "input_per_mtok")),
    ("price_output_per_mtok", lambda r, _: _price(r, "output_per_mtok")),
    ("price_cached_input_per_mtok", lambda r, _: _price(r, "cached_input_per_mtok")),
    ("price_cache_write_per_mtok", lambda r, _: _price(r, "cache_write_per_mtok")),
    ("price_per_image", lambda r, _: _price(r, "per_image")),
    ("price_per_request", lambda r, _: _price(r, "per_request")),
)
HEADER = tuple(name for name, _ in COLUMNS)


def row_values(row: UsageRecord, route_names: Mapping[int, str]) -> list[Value]:
    return [value(row, route_names) for _, value in COLUMNS]


# --- renderers: a header, then rows, into a local binary file ---------------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class CsvRenderer:
    """RFC 4180 CSV, UTF-8, CRLF line ends. Booleans true/false, nothing for null."""

    def __init__(self, out: IO[bytes]) -> None:
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
        self._writer = csv.writer(self._text)
        self._writer.writerow(HEADER)

    @staticmethod
    def cell(value: Value) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.startswith(FORMULA_START):
            return "'" + value  # a spreadsheet would run it as a formula
        return str(value)

    def rows(self, rows: list[list[Value]]) -> None:
        self._writer.writerows([self.cell(value) for value in row] for row in rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # the caller owns the binary file


class TooManyRowsForXlsx(Exception):
    pass


class XlsxRenderer:
    """One sheet, "usage", written row by row (openpyxl's write-only mode keeps rows in a temporary
    file, strings inline, so memory does not grow with the row count). A sheet holds at most
    1,048,576 rows (Excel's limit), the header included: more is an error, not a truncated file."""

    MAX_ROWS = 1_048_575

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._book = Workbook(write_only=True)
        self._sheet = self._book.create_sheet("usage")
        self._sheet.append(list(HEADER))
        self._count = 0

    def cell(self, value: Value) -> Any:
        if not isinstance(value, str):
            return value
        text = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)  # control characters a sheet cannot hold
        if text.startswith("=") or text in ERROR_CODES:
            cell = WriteOnlyCell(self._sheet, value=text)
            cell.data_type = "s"  # text, not a formula or an error value
            return cell
        return text

    def rows(self, rows: list[list[Value]]) -> None:
        self._count += len(rows)
        if self._count > self.MAX_ROWS:
            raise TooManyRowsForXlsx()
        for row in rows:
            self._sheet.append([self.cell(value) for value in row])

    def close(self) -> None:
        self._book.save(self._out)


RENDERERS: dict[str, type[CsvRenderer] | type[XlsxRenderer]] = {
    UsageExport.Format.CSV: CsvRenderer,
    UsageExport.Format.XLSX: XlsxRenderer,
}


# --- filters ------------------------------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return _iso(value) or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def filters_clean(filters: Mapping[str, str], *, now: datetime) -> dict[str, str]:
    """The usage page's filters as the export applies them, in the page's own text form: each
    checked by the page's FilterSet, the range's end frozen at `now` at the latest."""
    errors: dict[str, list[str]] = {name: ["Unknown filter."] for name in sorted(set(filters) - USAGE_FILTERS)}
    form = UsageFilter(data=dict(filters), queryset=UsageRecord.objects.none()).form
    if not form.is_valid():
        errors |= {name: [str(message) for message in messages] for name, messages in form.errors.items()}
    if errors:
        raise InvalidExport(errors)
    cleaned = {name: value for name, value in form.cleaned_data.items() if value not in (None, "")}
    before = min(cleaned.get("started_before") or now, now)
    after = cleaned.get("started_after")
    if after is not None and after >= before:
        raise InvalidExport({"started_after": ["Must be before started_before, and before now."]})
    cleaned["started_before"] = before
    return {name: _text(value) for name, value in sorted(cleaned.items())}


def export_rows(export: UsageExport) -> QuerySet[UsageRecord]:
    """The export's rows, unordered: the account's rows through the usage page's filters."""
    filterset = UsageFilter(data=export.filters, queryset=selectors.usage_rows(account_id=export.account_id))
    if not filterset.is_valid():  # an export stored by an older version whose filters changed
        raise InvalidExport({name: list(map(str, errors)) for name, errors in filterset.errors.items()})
    return filterset.qs


def _chunks(rows: QuerySet[UsageRecord], size: int) -> Iterator[list[UsageRecord]]:
    """The rows oldest first, by (started_at, id), in chunks of about `size`: keyset pagination on
    started_at, each chunk one short query (no cursor, no transaction kept open).

    A query orders by started_at alone, which the account's time index (usage_account_time, or
    the model's or the failing rows' one) hands over in order without sorting; ordering by id too
    would sort every remaining row of the range on each query. When the rows sharing the chunk's
    last started_at go on past it, that instant is read whole (by id), so that the next chunk can
    resume after it."""
    after: datetime | None = None
    while True:
        page = rows if after is None else rows.filter(started_at__gt=after)
        chunk = list(page.order_by("started_at")[: size + 1])  # one more: is the boundary a tie?
        full = len(chunk) > size
        if full:
            after = chunk[size - 1].started_at
            if chunk[size].started_at == after:
                chunk = [row for row in chunk if row.started_at != after]
                chunk += rows.filter(started_at=after).order_by("id")
            else:
                chunk = chunk[:size]
        chunk.sort(key=lambda row: (row.started_at, row.pk))
        if chunk:
            yield chunk
        if not full:
            return


# --- storage ------------------------------------------------------------------------------------


def export_storage() -> Storage:
    return storages[STORAGE_ALIAS]


def storage_name(export: UsageExport) -> str:
    return f"exports/{export.account_id}/{export.pk}.{export.format}"


def download_name(export: UsageExport) -> str:
    return f"openbili-usage-{export.account_id}-{export.created_at:%Y%m%d-%H%M%S}-{str(export.pk)[:8]}.{export.format}"


def _save(storage: Storage, name: str, content: IO[bytes]) -> None:
    """Save under exactly `name`, replacing what a dead earlier run may have left there (Django's
    storages pick another name rather than overwrite)."""
    if storage.exists(name):
        storage.delete(name)
    saved = storage.save(name, File(content, name=os.path.basename(name)))
    if saved != name:  # another writer got there in between: never keep two files
        storage.delete(saved)
        raise _StorageFailed(f"saved as {saved!r}, not {name!r}")


# --- the one-run-at-a-time lock ------------------------------------------------------------------


def _lock_key(export_id: uuid.UUID) -> int:
    return int.from_bytes(export_id.bytes[:4], "big", signed=True)


@contextmanager
def _run_lock(export_id: uuid.UUID) -> Iterator[bool]:
    """A session advisory lock (not a transaction): held across the whole run, including the
    storage upload, released by PostgreSQL if the process dies. Yields whether it was taken."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_LOCK, _lock_key(export_id)])
        (held,) = cursor.fetchone()
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_LOCK, _lock_key(export_id)])
            except DatabaseError:  # the connection is gone, and the lock with its session
                log.warning("export %s: could not release its run lock (connection lost)", export_id)


def _run_is_live(export_id: uuid.UUID) -> bool:
    with _run_lock(export_id) as held:
        return not held


def _account_lock(account_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ACCOUNT_LOCK, account_id % 2**31])


def _check_active(account_id: int) -> None:
    if UsageExport.objects.filter(account_id=account_id, status__in=ACTIVE).count() >= MAX_ACTIVE:
        raise TooManyExports(retry_after=30)


def _queue(export_id: uuid.UUID) -> None:
    from usage import tasks  # tasks wrap this module

    transaction.on_commit(lambda: tasks.export_run.delay(str(export_id)))


# --- services -----------------------------------------------------------------------------------


def export_create(*, account: Account, user, format: str, filters: Mapping[str, str]) -> UsageExport:
    """A queued export of the account's rows matching the usage page's `filters` (text values, as
    the page's query string has them); its job starts once this commits."""
    if format not in UsageExport.Format.values:
        raise InvalidExport({"format": [f"Must be one of: {', '.join(UsageExport.Format.values)}."]})
    now = timezone.now()
    applied = filters_clean(filters, now=now)
    with transaction.atomic():
        _account_lock(account.pk)
        _check_active(account.pk)
        export = UsageExport.objects.create(
            account=account, created_by=user, format=format, filters=applied, created_at=now
        )
        _queue(export.pk)
    log.info("export %s queued for account %s (%s)", export.pk, account.pk, format)
    return export


def export_retry(*, export: UsageExport) -> UsageExport:
    """Queue a failed or expired export again, or one whose run died (running, but no run holds
    it); ExportConflict otherwise. The same filters and range: the same rows, one file."""
    with transaction.atomic():
        _account_lock(export.account_id)
        current = UsageExport.objects.get(pk=export.pk)
        retryable = current.status in (UsageExport.Status.FAILED, UsageExport.Status.EXPIRED) or (
            current.status == UsageExport.Status.RUNNING and not _run_is_live(current.pk)
        )
        if not retryable:
            raise ExportConflict()
        _check_active(current.account_id)
        UsageExport.objects.filter(pk=current.pk, status=current.status).update(
            status=UsageExport.Status.QUEUED,
            run_token=None,
            error="",
            rows_done=0,
            rows_total=None,
            lost_runs=0,
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
            expires_at=None,
        )
        _queue(current.pk)
    log.info("export %s queued again (was %s)", current.pk, current.status)
    return UsageExport.objects.get(pk=export.pk)


@dataclass
class _Run:
    export: UsageExport
    token: uuid.UUID

    def write(self, **fields) -> None:
        """A write of this run's, only while the export is still this run's."""
        fields.setdefault("heartbeat_at", timezone.now())
        claimed = UsageExport.objects.filter(
            pk=self.export.pk, status=UsageExport.Status.RUNNING, run_token=self.token
        ).update(**fields)
        if not claimed:
            raise _RunLost()


def export_run(export_id: uuid.UUID) -> UsageExport:
    """Build the export's file (the job). Idempotent: a done, failed or expired export is returned
    as it is; ExportBusy if another live run holds it. Transient database errors propagate (the task
    retries); any other failure marks the export failed with a reason."""
    export_id = uuid.UUID(str(export_id))
    with _run_lock(export_id) as held:
        if not held:
            export = UsageExport.objects.get(pk=export_id)
            if export.status in ACTIVE:
                raise ExportBusy(str(export_id))
            return export
        run = _claim(export_id)
        if run is None:
            return UsageExport.objects.get(pk=export_id)
        try:
            _build(run)
        except _RunLost:
            log.info("export %s was taken from its run (retried or expired meanwhile)", export_id)
        except TRANSIENT:
            _requeue(run)
            raise
        except TooManyRowsForXlsx as exc:
            log.info("export %s failed: too many rows for XLSX", export_id)
            _fail(run, _reason(exc))
        except Exception as exc:  # the operator's log has the exception; the customer, a reason
            log.exception("export %s failed", export_id)
            _fail(run, _reason(exc))
    return UsageExport.objects.get(pk=export_id)


def _claim(export_id: uuid.UUID) -> _Run | None:
    """Take the export for this run (the run lock is held, so no other run is live): a queued one,
    or a running one whose run died. None when there is nothing to do."""
    export = UsageExport.objects.get(pk=export_id)
    if export.status not in ACTIVE:
        return None
    lost_runs = export.lost_runs + (export.status == UsageExport.Status.RUNNING)
    now = timezone.now()
    token = uuid.uuid4()
    fields: dict[str, Any] = {"run_token": token, "attempts": F("attempts") + 1, "lost_runs": lost_runs}
    if lost_runs > MAX_LOST_RUNS:
        fields |= {"run_token": None, "status": UsageExport.Status.FAILED, "finished_at": now}
        fields["error"] = (
            f"The export's run stopped {lost_runs} times without finishing (a worker was killed, e.g. out "
            "of memory or time). Retry it, or export a shorter time range."
        )
    else:
        fields |= {"status": UsageExport.Status.RUNNING, "started_at": now, "heartbeat_at": now}
        fields |= {"rows_done": 0, "rows_total": None, "error": ""}
    claimed = UsageExport.objects.filter(pk=export_id, status=export.status, attempts=export.attempts).update(**fields)
    if not claimed or lost_runs > MAX_LOST_RUNS:
        return None
    export.refresh_from_db()
    if export.attempts > 1:
        log.info("export %s: run %d (%d lost before)", export_id, export.attempts, lost_runs)
    return _Run(export, token)


def _build(run: _Run) -> None:
    export = run.export
    rows = export_rows(export)
    total = rows.count()
    run.write(rows_total=total)
    if export.format == UsageExport.Format.XLSX and total > XlsxRenderer.MAX_ROWS:
        raise TooManyRowsForXlsx()
    done = 0
    with tempfile.TemporaryFile() as out:
        renderer = RENDERERS[export.format](out)
        for chunk in _chunks(rows, CHUNK_ROWS):
            names = selectors.route_names(selectors.page_route_ids(chunk))
            renderer.rows([row_values(row, names) for row in chunk])
            done += len(chunk)
            run.write(rows_done=done, rows_total=max(total, done))
        renderer.close()
        size = out.seek(0, io.SEEK_END)
        out.seek(0)
        run.write()  # still ours, just before the upload
        name = storage_name(export)
        try:
            _save(export_storage(), name, out)
        except (OSError, _StorageFailed) as exc:
            raise _StorageFailed(str(exc)) from exc
    now = timezone.now()
    run.write(
        status=UsageExport.Status.DONE,
        run_token=None,
        rows_done=done,
        rows_total=done,
        file_name=name,
        size_bytes=size,
        finished_at=now,
        expires_at=now + timedelta(seconds=settings.OPENBILI_EXPORT_TTL_SECONDS),
        lost_runs=0,
        error="",
    )
    log.info("export %s done: %d rows, %d bytes", export.pk, done, size)


def _reason(exc: Exception) -> str:
    if isinstance(exc, _StorageFailed):
        return "The file could not be saved to storage. Retry the export."
    if isinstance(exc, TooManyRowsForXlsx):
        return (
            f"More than {XlsxRenderer.MAX_ROWS:,} rows, the most an XLSX sheet holds: export CSV, or a shorter "
            "time range."
        )
    if isinstance(exc, SoftTimeLimitExceeded):
        return "The export took longer than its time limit. Retry it, or export a shorter time range."
    if isinstance(exc, InvalidExport):
        return "The export's filters are no longer valid: " + ", ".join(sorted(exc.fields)) + ". Create a new one."
    return "Internal error while building the export. Retry it; open a ticket if it keeps failing."


def _fail(run: _Run, reason: str) -> None:
    with suppress(_RunLost):  # retried or expired meanwhile: not ours to mark
        run.write(status=UsageExport.Status.FAILED, run_token=None, error=reason, finished_at=timezone.now())


def _requeue(run: _Run) -> None:
    """After a transient error: back to queued for the task's retry (best effort: the database may
    be the trouble; a running export with no live run is claimed again anyway)."""
    try:
        UsageExport.objects.filter(pk=run.export.pk, run_token=run.token).update(
            status=UsageExport.Status.QUEUED, run_token=None, error="Waiting to retry: the database was unavailable."
        )
    except DatabaseError:
        log.warning("export %s: could not mark it queued for its retry", run.export.pk)


def export_fail(export_id: uuid.UUID, *, reason: str) -> bool:
    """Mark a queued or running export failed when its job gave up (retries exhausted); not while
    a live run holds it. Whether it was marked."""
    with _run_lock(export_id) as held:
        if not held:
            return False
        return bool(
            UsageExport.objects.filter(pk=export_id, status__in=ACTIVE).update(
                status=UsageExport.Status.FAILED, run_token=None, error=reason, finished_at=timezone.now()
            )
        )


def exports_expire(now: datetime | None = None) -> int:
    """Mark done exports past expires_at expired, then delete the files of expired (and failed)
    exports; the number of files deleted. Safe to run anywhere, concurrently: a file is deleted
    under its export's run lock, so never while a retry writes it anew; one the backend fails to
    delete keeps its name for the next run."""
    now = now or timezone.now()
    expired = UsageExport.objects.filter(status=UsageExport.Status.DONE, expires_at__lte=now).update(
        status=UsageExport.Status.EXPIRED
    )
    storage = export_storage()
    deleted = 0
    last: uuid.UUID | None = None
    stale = Q(status__in=[UsageExport.Status.EXPIRED, UsageExport.Status.FAILED]) & ~Q(file_name="")
    while True:
        batch = UsageExport.objects.filter(stale).order_by("pk")
        if last is not None:
            batch = batch.filter(pk__gt=last)
        candidates = list(batch.values_list("pk", flat=True)[:EXPIRE_BATCH])
        for export_id in candidates:
            with _run_lock(export_id) as held:
                if not held:
                    continue  # a retry is writing it anew
                found = UsageExport.objects.filter(stale, pk=export_id).values_list("file_name", flat=True).first()
                if found is None:
                    continue
                try:
                    storage.delete(found)
                except Exception:
                    log.exception("export %s: could not delete %s; kept for the next run", export_id, found)
                    continue
                UsageExport.objects.filter(stale, pk=export_id, file_name=found).update(file_name="", size_bytes=None)
                deleted += 1
        if len(candidates) < EXPIRE_BATCH:
            break
        last = candidates[-1]
    if expired or deleted:
        log.info("exports: %d expired, %d file(s) deleted", expired, deleted)
    exports_resend_stale(now)
    return deleted


STALE_QUEUED = timedelta(minutes=30)


def exports_resend_stale(now: datetime | None = None) -> int:
    """Send the job of every export still queued long after its creation again: a broker that lost
    the message (a Redis restart without persistence) would otherwise leave it queued for good. A
    job that was only slow is harmless to send twice: a run is status-guarded and one at a time."""
    now = now or timezone.now()
    stale = list(
        UsageExport.objects.filter(status=UsageExport.Status.QUEUED, created_at__lt=now - STALE_QUEUED)
        .order_by("created_at")
        .values_list("pk", flat=True)[:EXPIRE_BATCH]
    )
    from usage import tasks  # tasks wrap this module

    for export_id in stale:
        tasks.export_run.delay(str(export_id))
    if stale:
        log.warning("exports: %d queued for over %s sent again", len(stale), STALE_QUEUED)
    return len(stale)


@dataclass
class ExportFile:
    file: IO[bytes]
    filename: str
    content_type: str
    size: int | None


def export_file(export: UsageExport) -> ExportFile:
    """The done export's file, open for reading; ExportNotReady before, ExportGone after expiry."""
    if export.status == UsageExport.Status.EXPIRED:
        raise ExportGone()
    if export.status != UsageExport.Status.DONE:
        raise ExportNotReady(f"The export is {export.status}: its file is not ready.")
    try:
        handle = export_storage().open(export.file_name, "rb")
    except FileNotFoundError:
        log.error("export %s is done but its file %s is missing", export.pk, export.file_name)
        raise ExportGone("The export's file is missing: create a new export.") from None
    return ExportFile(handle, download_name(export), CONTENT_TYPES[export.format], export.size_bytes)


def export_progress(export: UsageExport) -> float:
    """0 to 1: 1 only once done."""
    if export.status == UsageExport.Status.DONE:
        return 1.0
    if export.status != UsageExport.Status.RUNNING or not export.rows_total:
        return 0.0
    return min(export.rows_done / export.rows_total, 0.99)
