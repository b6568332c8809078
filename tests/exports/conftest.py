"""Shared pieces of the export tests: a storage of the test's own, a varied set of usage rows of one
account beside another account's, and readers that open the files with the csv module and
openpyxl. The expected cells are written out here from the rows, independently of usage/exports.py."""

from __future__ import annotations

import csv
import io
import itertools
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from django.conf import settings as django_settings
from django.core.files.storage import storages

from billing import services
from billing.models import ApiKey, PriceSnapshot, Route
from billing.selectors import price_snapshot_current
from tests.api.conftest import Caller, alice  # noqa: F401 - fixture
from tests.factories import CatalogModelFactory, make_visible_model
from usage.models import UsageExport, UsageRecord

T1 = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)  # the rows of these tests start here, a minute apart


def storage_settings(location: Path) -> dict:
    return {
        **django_settings.STORAGES,
        "openbili_exports": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location), "file_permissions_mode": 0o600},
        },
    }


@pytest.fixture
def export_dir(tmp_path, settings) -> Path:
    """The exports' storage, on a directory of this test's (Django resets `storages` on change)."""
    location = tmp_path / "exports-storage"
    settings.STORAGES = storage_settings(location)
    assert Path(storages["openbili_exports"].location) == location
    return location


def files_of(location: Path) -> list[Path]:
    return sorted(p for p in location.rglob("*") if p.is_file()) if location.exists() else []


@dataclass
class Dataset:
    owner: Caller
    other: Caller
    key: ApiKey
    secret: str
    other_key: ApiKey
    route: Route
    snapshot: PriceSnapshot
    rows: list[UsageRecord]  # the owner's rows, oldest first
    other_rows: list[UsageRecord]


_numbers = itertools.count(1)


def make_row(account, *, key: ApiKey | None = None, at: datetime, **fields) -> UsageRecord:
    """A finished usage row as the gateway writes it, like tests/api/test_usage.py's make_row but
    numbered apart (that one's counter also dates its rows: thousands here would move them)."""
    n = next(_numbers)
    values = {
        "request_id": f"req_e{n:031x}",
        "trace_id": f"trace_e{n:031x}",
        "account": account,
        "api_key": key,
        "key_prefix": key.prefix if key else "",
        "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-5",
        "provider": "openai",
        "upstream_model": "gpt-5",
        "status": 200,
        "billing_result": UsageRecord.BillingResult.BILLED,
        "started_at": at,
        "first_byte_at": at + timedelta(milliseconds=250),
        "finished_at": at + timedelta(milliseconds=1500),
    }
    return UsageRecord.objects.create(**(values | fields))


def varied_rows(account, *, key, route, snapshot, count: int, start: datetime = T1) -> list[UsageRecord]:
    """Rows of every kind the filters tell apart: models, keys, endpoints, statuses, error classes,
    billing results, streams; costs with all 12 decimal places."""
    made = []
    for i in range(count):
        n = next(_numbers)
        failing = i % 5 == 3
        fields = {
            "key": key if i % 4 else None,
            "at": start + timedelta(minutes=i, microseconds=i),
            "model_requested": ("gpt-5", "claude-sonnet-4-6", "gpt-4.1")[i % 3],
            "endpoint": ("/v1/chat/completions", "/v1/messages", "/v1/responses")[i % 3 if i % 7 else 1],
            "stream": i % 2 == 0,
            "route": route if i % 3 == 0 else None,
            "price_snapshot": snapshot if i % 6 else None,
            "input_tokens": 1000 + 17 * i,
            "output_tokens": 250 + 3 * i,
            "cached_input_tokens": 64 * (i % 4),
            "cache_write_tokens": 5 * (i % 2),
            "reasoning_tokens": 7 * (i % 3),
            "image_count": i % 2,
            "tokens_estimated": i % 9 == 0,
            "max_tokens_requested": 100_000 if i % 2 else None,
            "max_tokens_applied": 16_384 if i % 2 else None,
            "attempts": [{"attempt": 1, "route_id": route.pk, "status": 200, "error": "", "ms": 12.5}]
            if i % 3 == 0
            else [],
        }
        if failing:
            fields |= {
                "status": 429,
                "error_class": UsageRecord.ErrorClass.QUOTA_OR_RATE_LIMIT,
                "error_code": "rate_limit_exceeded",
                "error_message": "Rate limit reached for requests, try again in 2 s.",
                "billing_result": UsageRecord.BillingResult.NOT_BILLED,
                "cost_usd": Decimal(0),
            }
        elif i % 5 == 4:
            fields |= {
                "status": 502,
                "error_class": UsageRecord.ErrorClass.STREAM_INTERRUPTED,
                "error_code": "upstream_stream_interrupted",
                "billing_result": UsageRecord.BillingResult.FAILED_BUT_BILLABLE,
                "cost_usd": Decimal(f"0.{n:012d}"),
                "output_reached_client": True,
                "client_disconnected_at": start + timedelta(minutes=i, seconds=1),
            }
        else:
            fields["cost_usd"] = Decimal(f"{n % 3}.{(n * 7919) % 10**12:012d}")
            fields["uncharged_usd"] = Decimal("0.000000000001") if i % 8 == 1 else Decimal(0)
        made.append(make_row(account, **fields))
    return made


@pytest.fixture
def dataset(db) -> Dataset:
    owner = Caller("exporter", role="member")
    other = Caller("bystander")
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))
    route = Route.objects.get(model=model)
    snapshot = price_snapshot_current(model)
    key, secret = services.key_create(account=owner.account, name="exported key")
    other_key, _ = services.key_create(account=other.account, name="not mine")
    rows = varied_rows(owner.account, key=key, route=route, snapshot=snapshot, count=40)
    other_rows = varied_rows(other.account, key=other_key, route=route, snapshot=snapshot, count=12)
    return Dataset(owner, other, key, secret, other_key, route, snapshot, rows, other_rows)


# --- what a file must say about a row -------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def ms(start, end) -> int | None:
    return None if start is None or end is None else round((end - start).total_seconds() * 1000)


def expected(row: UsageRecord, route_names: dict[int, str]) -> dict[str, object]:
    """The typed cells of a row (as the XLSX holds them; the CSV holds their text)."""
    row = UsageRecord.objects.select_related("price_snapshot").get(pk=row.pk)  # as stored: 12 places
    snap = row.price_snapshot
    attempts = [a for a in row.attempts if isinstance(a, dict)]
    price = {
        f"price_{name}": (None if snap is None else format(getattr(snap, name), "f"))
        for name in (
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "cache_write_per_mtok",
            "per_image",
            "per_request",
        )
    }
    return {
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "started_at": iso(row.started_at),
        "first_byte_at": iso(row.first_byte_at),
        "finished_at": iso(row.finished_at),
        "time_to_first_byte_ms": ms(row.started_at, row.first_byte_at),
        "duration_ms": ms(row.started_at, row.finished_at),
        "api_key": row.api_key_id,
        "key_prefix": row.key_prefix,
        "endpoint": row.endpoint,
        "model": row.model_requested,
        "provider": row.provider,
        "upstream_model": row.upstream_model,
        "route": route_names.get(row.route_id) if row.route_id else None,
        "attempts": len(attempts),
        "attempt_routes": " > ".join(route_names[a["route_id"]] for a in attempts),
        "stream": row.stream,
        "status": row.status,
        "error_class": row.error_class,
        "error_code": row.error_code,
        "error_message": row.error_message,
        "billing_result": row.billing_result,
        "output_reached_client": row.output_reached_client,
        "client_disconnected_at": iso(row.client_disconnected_at),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "image_count": row.image_count,
        "tokens_estimated": row.tokens_estimated,
        "max_tokens_requested": row.max_tokens_requested,
        "max_tokens_applied": row.max_tokens_applied,
        "cost_usd": format(row.cost_usd, "f"),
        "uncharged_usd": format(row.uncharged_usd, "f"),
        "price_snapshot_id": row.price_snapshot_id,
        "price_model": snap.model_name if snap else None,
        "price_currency": snap.currency if snap else None,
        **price,
    }


def as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_csv(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader)
    return header, [dict(zip(header, cells, strict=True)) for cells in reader]


def read_xlsx(data: bytes) -> tuple[list[str], list[dict[str, object]]]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    assert book.sheetnames == ["usage"]
    cells = list(book["usage"].iter_rows(values_only=True))
    book.close()
    header = [str(name) for name in cells[0]]
    # empty cells are not written: a row may end early (openpyxl, Excel and pandas read them as empty)
    return header, [dict(zip(header, row + (None,) * (len(header) - len(row)), strict=True)) for row in cells[1:]]


def xlsx_xml(data: bytes) -> bytes:
    """Every part of the XLSX unzipped, to search for what must never be in it."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return b"".join(archive.read(name) for name in archive.namelist())


def read_export(export: UsageExport) -> tuple[list[str], list[dict]]:
    export.refresh_from_db()
    assert export.status == UsageExport.Status.DONE, (export.status, export.error)
    with storages["openbili_exports"].open(export.file_name, "rb") as handle:
        data = handle.read()
    assert len(data) == export.size_bytes
    return read_csv(data) if export.format == UsageExport.Format.CSV else read_xlsx(data)


def totals(rows: list[dict]) -> dict[str, object]:
    """Sums over a file's rows, exact: money as Decimal from its text, tokens as integers."""
    tokens = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
    sums: dict[str, object] = {name: sum(int(r[name]) for r in rows) for name in (*tokens, "image_count")}
    sums["cost_usd"] = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    sums["uncharged_usd"] = sum((Decimal(r["uncharged_usd"]) for r in rows), Decimal(0))
    sums["rows"] = len(rows)
    return sums


def db_totals(queryset) -> dict[str, object]:
    from django.db.models import Count, Sum

    names = (
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "image_count",
        "cost_usd",
        "uncharged_usd",
    )
    found = queryset.aggregate(rows=Count("pk"), **{name: Sum(name) for name in names})
    return {name: (found[name] if found[name] is not None else 0) for name in (*names, "rows")}
