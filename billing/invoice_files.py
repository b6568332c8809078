"""An invoice as XLSX (a summary sheet, a detail sheet of lines, the price snapshots used) or CSV
(the lines and a total row). Rendered from the final invoice on each download: the same invoice
always gives the same numbers. Money is written as exact decimal text (openpyxl would turn a
Decimal into a float and lose digits): amounts to the cent as numbers are not needed to read it,
and exact text survives every spreadsheet."""

from __future__ import annotations

import csv
import io

from openpyxl import Workbook

from billing.models import Invoice, InvoiceLine, PriceSnapshot, PriceVersion

LINE_COLUMNS = (
    "model", "endpoint", "billing_result", "requests", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_write_tokens", "reasoning_tokens", "image_count", "cost_usd_exact", "amount_usd", "price_snapshot_ids",
)  # fmt: skip
ROUNDING = "each line's exact cost is rounded to the cent once, half-even (banker's rounding); total = sum of lines"


def _money(value) -> str:
    return f"{value:f}"


def line_values(line: InvoiceLine) -> list:
    return [
        line.model, line.endpoint, line.billing_result, line.requests, line.input_tokens, line.output_tokens,
        line.cached_input_tokens, line.cache_write_tokens, line.reasoning_tokens, line.image_count,
        _money(line.cost), _money(line.amount), " ".join(map(str, line.price_snapshot_ids)),
    ]  # fmt: skip


def total_row(invoice: Invoice) -> list:
    return ["total", *[""] * 9, _money(invoice.usage_exact), _money(invoice.total), ""]


def summary_rows(invoice: Invoice) -> list[tuple[str, str]]:
    return [
        ("invoice", invoice.number),
        ("account", f"{invoice.account.name} (#{invoice.account_id})"),
        ("period_start", invoice.period_start.isoformat().replace("+00:00", "Z")),
        ("period_end", invoice.period_end.isoformat().replace("+00:00", "Z")),
        ("currency", invoice.currency),
        ("opening_balance", _money(invoice.opening_balance)),
        ("topups", _money(invoice.topups)),
        ("refunds", _money(invoice.refunds)),
        ("adjustments", _money(invoice.adjustments)),
        ("usage_exact", _money(invoice.usage_exact)),
        ("total", _money(invoice.total)),
        ("closing_balance", _money(invoice.closing_balance)),
        ("rounding", ROUNDING),
    ]


def as_csv(invoice: Invoice) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(LINE_COLUMNS)
    for line in invoice.lines.all():
        writer.writerow(line_values(line))
    writer.writerow(
        ["total", "", "", "", "", "", "", "", "", "", _money(invoice.usage_exact), _money(invoice.total), ""]
    )
    return out.getvalue().encode()


def as_xlsx(invoice: Invoice) -> bytes:
    book = Workbook(write_only=True)
    summary = book.create_sheet("Summary")
    for row in summary_rows(invoice):
        summary.append(list(row))
    detail = book.create_sheet("Lines")
    detail.append(list(LINE_COLUMNS))
    lines = list(invoice.lines.all())
    for line in lines:
        detail.append(line_values(line))
    detail.append(total_row(invoice))
    prices = book.create_sheet("Price snapshots")
    prices.append(["id", "model", "currency", *PriceVersion.PRICE_FIELDS])
    ids = sorted({snapshot for line in lines for snapshot in line.price_snapshot_ids})
    for snapshot in PriceSnapshot.objects.filter(pk__in=ids).order_by("pk"):
        data = snapshot.as_dict()
        prices.append([data["id"], data["model"], data["currency"], *(data[f] for f in PriceVersion.PRICE_FIELDS)])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


# The renderings by name: (content type, renderer). One table for the API and the admin.
FILES = {
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", as_xlsx),
    "csv": ("text/csv; charset=utf-8", as_csv),
}
