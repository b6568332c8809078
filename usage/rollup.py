"""The hourly roll-up of usage rows (models UsageHour, UsageRollup, UsageHourDirty).

A periodic job (`usage_rollup`: Celery beat, or the launcher's loop) recomputes whole UTC hours
from the rows and advances a watermark; the summaries (usage.selectors.usage_aggregate) read the
roll-up for hours below the watermark and the rows for the rest. The gateway's hot path is
untouched: no trigger, no extra statement in the reserve or the settle.

An hour may only be rolled up once its rows stop changing. A row changes after it is opened only
while its request holds credit (the settle, the sweeper, a background response's poll), so the
watermark never passes the oldest open hold, nor `now - OPENBILI_USAGE_ROLLUP_MARGIN_SECONDS`
(rows written whole at the end of a short request, clock skew between gateway and database). A
write that lands later — an outbox item, after the database was away — is not seen by an hour
already rolled up: the drain marks that hour in UsageHourDirty (outbox.MARK_DIRTY), and the
next run recomputes it. Recomputing an hour is a DELETE and an
INSERT … SELECT in one transaction, so a reader sees the old hour or the new one, never half of
either, and a run repeated or interrupted changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from usage.selectors import ERROR_CLASSES, TOKEN_COLUMNS, floor_hour, rollup_watermark

log = logging.getLogger("openbili.usage")

HOUR = timedelta(hours=1)
CHUNK = timedelta(days=1)  # a first run over a big table commits a day at a time
LOCK = 0x0B1_0011  # pg_advisory_xact_lock key: one run at a time, whatever process runs it

GROUP = ("account_id", "api_key_id", "key_prefix", "endpoint", "model_requested")
_AGGREGATES = {
    "requests": "count(*)",
    "errors": "count(*) FILTER (WHERE error_class <> '')",
    **{f"error_{name}": f"count(*) FILTER (WHERE error_class = '{name}')" for name in ERROR_CLASSES},
    **{f"tokens_{kind}": f"coalesce(sum({column}), 0)" for kind, column in TOKEN_COLUMNS.items()},
    "image_count": "coalesce(sum(image_count), 0)",
    "cost_usd": "coalesce(sum(cost_usd), 0)",
    "uncharged_usd": "coalesce(sum(uncharged_usd), 0)",
}
# Constant SQL built from the column names above (no input in it).
RECOMPUTE = f"""
INSERT INTO usage_usagehour (hour, {", ".join(GROUP)}, {", ".join(_AGGREGATES)})
SELECT date_trunc('hour', started_at, 'UTC'), {", ".join(GROUP)}, {", ".join(_AGGREGATES.values())}
  FROM usage_usagerecord
 WHERE started_at >= %(start)s AND started_at < %(end)s AND account_id IS NOT NULL
 GROUP BY 1, {", ".join(str(i) for i in range(2, len(GROUP) + 2))}
"""  # noqa: S608


watermark = rollup_watermark  # hours before it are in the roll-up (None: nothing is)


def horizon(now: datetime) -> datetime:
    """How far the roll-up may go now: a whole hour, before every open hold and the margin."""
    margin = timedelta(seconds=settings.OPENBILI_USAGE_ROLLUP_MARGIN_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(created_at) FROM billing_hold WHERE resolved_at IS NULL")
        (oldest_hold,) = cursor.fetchone()
    limit = now - margin
    if oldest_hold is not None:
        limit = min(limit, oldest_hold - margin)
    return floor_hour(limit)


def _recompute(cursor, start: datetime, end: datetime) -> None:
    span = {"start": start, "end": end}
    cursor.execute("DELETE FROM usage_usagehour WHERE hour >= %(start)s AND hour < %(end)s", span)
    cursor.execute(RECOMPUTE, span)


def usage_rollup(*, now: datetime | None = None) -> int:
    """Roll up the hours the watermark may now pass and recompute the dirty ones. Returns how
    many hours were (re)computed. Safe to run anywhere, any number of times, concurrently."""
    now = now or datetime.now(UTC)
    done = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])
            cursor.execute("SELECT through FROM usage_usagerollup WHERE id = 1")
            row = cursor.fetchone()
            through = row[0] if row else None
            if through is None:
                cursor.execute("SELECT min(started_at) FROM usage_usagerecord")
                (first,) = cursor.fetchone()
                through = floor_hour(first) if first is not None else None
            target = horizon(now)
            if through is None or through >= target:
                if through is not None or row is None:
                    cursor.execute(
                        "INSERT INTO usage_usagerollup (id, through, updated_at) VALUES (1, %s, now()) "
                        "ON CONFLICT (id) DO NOTHING",
                        [through],
                    )
                break
            end = min(target, through + CHUNK)
            _recompute(cursor, through, end)
            cursor.execute(
                "INSERT INTO usage_usagerollup (id, through, updated_at) VALUES (1, %s, now()) "
                "ON CONFLICT (id) DO UPDATE SET through = EXCLUDED.through, updated_at = now()",
                [end],
            )
            done += int((end - through) / HOUR)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])
        cursor.execute("DELETE FROM usage_usagehourdirty RETURNING hour")
        for (hour,) in sorted(cursor.fetchall()):
            _recompute(cursor, hour, hour + HOUR)
            done += 1
    if done:
        log.info("usage roll-up: %d hour(s) computed, through %s", done, watermark())
    return done
