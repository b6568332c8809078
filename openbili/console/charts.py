"""Server-rendered SVG charts of the usage page: stacked bars per time bucket, one colour per
model. Pure functions from usage.selectors.usage_aggregate groups to markup; every label goes
through format_html, so a model name cannot inject markup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#db2777", "#ca8a04", "#4b5563")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 180, 56, 22, 8
MAX_SERIES = len(PALETTE) - 1  # the rest are summed as "other"


def buckets_between(start: datetime, end: datetime, bucket: str) -> list[datetime]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    first = start.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        first = first.replace(hour=0)
    out = []
    moment = first
    while moment < end:
        out.append(moment)
        moment += step
    return out


def series_by_model(groups: Sequence[dict], metric: str) -> dict[str, dict[datetime, Decimal]]:
    """{model: {bucket: value}}, the largest models first and the tail as "other"."""
    by_model: dict[str, dict[datetime, Decimal]] = {}
    for group in groups:
        values = by_model.setdefault(group["model_requested"] or "—", {})
        values[group["bucket"]] = values.get(group["bucket"], Decimal(0)) + Decimal(group[metric] or 0)
    ranked = sorted(by_model, key=lambda name: (-sum(by_model[name].values()), name))
    if len(ranked) <= MAX_SERIES + 1:
        return {name: by_model[name] for name in ranked}
    kept = {name: by_model[name] for name in ranked[:MAX_SERIES]}
    other: dict[datetime, Decimal] = {}
    for name in ranked[MAX_SERIES:]:
        for moment, value in by_model[name].items():
            other[moment] = other.get(moment, Decimal(0)) + value
    return kept | {"other": other}


def _tick(value: Decimal, money: bool) -> str:
    if money:
        return f"${value:.4f}" if value < 1 else f"${value:.2f}"
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:.2f}"


def stacked_bars(
    title: str, buckets: Sequence[datetime], series: dict[str, dict[datetime, Decimal]], *, money: bool = False
) -> SafeString:
    """An <svg> of one bar per bucket, stacked by series, with a y-axis maximum and a legend."""
    totals = [sum((values.get(moment, Decimal(0)) for values in series.values()), Decimal(0)) for moment in buckets]
    peak = max(totals, default=Decimal(0)) or Decimal(1)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.8, 1.0)
    rects = []
    for index, moment in enumerate(buckets):
        y = float(TOP + plot_h)
        for colour, (name, values) in zip(PALETTE, series.items(), strict=False):
            value = values.get(moment, Decimal(0))
            if not value:
                continue
            h = float(value / peak) * plot_h
            y -= h
            x = LEFT + index * slot + (slot - bar_w) / 2
            label = f"{name} {moment:%Y-%m-%d %H:%M}: {_tick(value, money)}"
            rects.append((f"{x:.1f}", f"{y:.1f}", f"{bar_w:.1f}", f"{h:.1f}", colour, label))
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        rects,
    )
    labels = ""
    if buckets:
        fmt = "%m-%d %H:00" if len(buckets) > 1 and buckets[1] - buckets[0] < timedelta(days=1) else "%m-%d"
        labels = format_html(
            '<text x="{}" y="{}" class="axis">{}</text><text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
            LEFT, HEIGHT - 6, buckets[0].strftime(fmt), WIDTH - 4, HEIGHT - 6, buckets[-1].strftime(fmt),
        )  # fmt: skip
    legend = format_html_join(
        "",
        '<span class="legend-item"><span class="swatch" style="background:{}"></span>{}</span>',
        ((colour, name) for colour, name in zip(PALETTE, series, strict=False)),
    )
    svg = format_html(
        '<svg viewBox="0 0 {w} {h}" class="chart" role="img" aria-label="{title}">'
        '<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" class="grid"/>'
        '<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" class="grid"/>'
        '<text x="{tx}" y="{ty}" class="axis" text-anchor="end">{peak}</text>'
        '<text x="{tx}" y="{base}" class="axis" text-anchor="end">0</text>'
        "{bars}{labels}</svg>",
        w=WIDTH, h=HEIGHT, title=title, left=LEFT, top=TOP, base=TOP + plot_h, right=WIDTH - 4,
        tx=LEFT - 4, ty=TOP + 10, peak=_tick(peak if any(totals) else Decimal(0), money), bars=bars, labels=labels,
    )  # fmt: skip
    return mark_safe(  # noqa: S308 - both parts were built by format_html / format_html_join
        f'<figure class="chart-box"><figcaption>{format_html("{}", title)}</figcaption>{svg}'
        f'<div class="legend">{legend}</div></figure>'
    )
