"""The usage page at volume (issue 11, Deliver 6): build N usage rows, time the dashboard API on them.

    .venv/bin/python bench/usage_volume.py                       # 10,000,000 rows, 1,000,000 of one account
    .venv/bin/python bench/usage_volume.py --rows 1000000 --account-rows 100000 --runs 20
    .venv/bin/python bench/usage_volume.py --reuse               # time again on the data already built

One command builds everything in its own database (`openbili_volume` on the server of
DATABASE_URL, or 127.0.0.1:5432 as postgres): the migrations, 1 + `--others` accounts with a key
each, one catalog model with a price snapshot, then the rows with `INSERT … SELECT` over
`generate_series` in chunks of a million, spread over the last `--days` days (the big account's
share is `--account-rows`; a tenth of its rows are errors, some streams, four models, three
endpoints), then ANALYZE, then the summaries' hourly roll-up (the `usage_rollup` job, timed).
The rows go through the same table, constraints and indexes as production; nothing is loaded
through the ORM, so building 10M rows takes minutes, not hours.

Then it times, in this process through Django's test client (the server's own work: URL routing,
auth by personal token, the query, serialisation — no network), the median and p95 of `--runs`
calls each of: the usage list's first page (unfiltered, by model, by status, by error class, a
time range), the 30-day summary (by day, grouped by model) and the OpenAI-shaped completions usage
(1d buckets). Targets: < 100 ms each (printed PASS/FAIL). EXPLAIN of the list's query is printed
too, to see which index serves it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BASE))
DB = "openbili_volume"
CHUNK = 1_000_000
TARGET_MS = 100.0


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{DB}"))


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("OPENBILI_INSECURE_DEV_SECRET", "1")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")
    import django

    django.setup()


def recreate_database(url: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# The rows: every column of usage_usagerecord that has no default, from the series number `n`.
ROWS = """
INSERT INTO usage_usagerecord (
    request_id, trace_id, account_id, api_key_id, key_prefix, endpoint, model_requested, provider,
    upstream_model, stream, status, error_class, error_code, error_message, input_tokens,
    output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, image_count,
    tokens_estimated, cost_usd, uncharged_usd, billing_result, price_snapshot_id,
    output_reached_client, started_at, first_byte_at, finished_at, attempts, user_agent, response_id
)
SELECT 'req_' || overlay(md5(%(seed)s || n::text) PLACING '4' FROM 13),
       'trace_' || md5(%(seed)s || 't' || n::text),
       %(account_id)s, %(key_id)s, %(prefix)s,
       (ARRAY['/v1/chat/completions', '/v1/messages', '/v1/responses'])[1 + n %% 3],
       (ARRAY['gpt-5', 'claude-sonnet-4-6', 'gpt-4.1', 'gpt-image-2'])[1 + (n / 7) %% 4],
       'openai', 'gpt-5', (n %% 5 = 0),
       CASE WHEN n %% 10 = 0 THEN 502 WHEN n %% 37 = 0 THEN 429 ELSE 200 END,
       CASE WHEN n %% 10 = 0 THEN 'upstream_or_platform_error' WHEN n %% 37 = 0 THEN 'quota_or_rate_limit' ELSE '' END,
       CASE WHEN n %% 10 = 0 THEN 'upstream_error' WHEN n %% 37 = 0 THEN 'rate_limit_exceeded' ELSE '' END,
       '', 100 + n %% 900, 10 + n %% 90, 0, 0, 0, 0, false,
       CASE WHEN n %% 10 = 0 OR n %% 37 = 0 THEN 0 ELSE 0.000205 END, 0,
       CASE WHEN n %% 10 = 0 OR n %% 37 = 0 THEN 'not_billed' ELSE 'billed' END,
       %(snapshot_id)s, true,
       now() - make_interval(secs => (n::float8 / %(count)s) * %(days)s * 86400),
       now() - make_interval(secs => (n::float8 / %(count)s) * %(days)s * 86400) + interval '300 milliseconds',
       now() - make_interval(secs => (n::float8 / %(count)s) * %(days)s * 86400) + interval '800 milliseconds',
       '[]'::jsonb, 'bench', ''
  FROM generate_series(%(start)s, %(stop)s) AS n
"""


def build(args) -> dict:
    from django.core.management import call_command
    from django.db import connection

    from billing import services
    from billing.models import CatalogModel
    from tests.api.conftest import Caller
    from tests.factories import AccountFactory

    say("migrations")
    call_command("migrate", verbosity=0)
    model = CatalogModel.objects.create(name="gpt-5", context_window=400_000, max_output_tokens=128_000)
    version, _ = services.price_version_publish(model=model, prices={"input_per_mtok": "1.25", "output_per_mtok": "10"})
    snapshot = services.price_snapshot_for(version)
    owner = Caller("volume-owner")
    accounts = [(owner.account, args.account_rows)]
    others = max(args.rows - args.account_rows, 0)
    for index in range(args.others):
        accounts.append((AccountFactory(name=f"other-{index}"), others // args.others))
    from django.utils import timezone

    from billing.invoices import month_start, next_month
    from usage import partitions

    month = month_start(timezone.now() - timedelta(days=args.days))
    while month <= timezone.now():  # each month's partition first: rows go there, not to DEFAULT
        partitions.partition_ensure(month)
        month = next_month(month)
    with connection.cursor() as cursor:
        insert_rows(cursor, accounts, snapshot, days=args.days)
        cursor.execute("ANALYZE usage_usagerecord")
    return {"account_id": owner.account.pk, "secret": owner.secret}


def insert_rows(cursor, accounts, snapshot, *, days: int, rows_sql: str = ROWS) -> None:
    """Each account's rows (a key of its own), a million per INSERT … SELECT (`rows_sql`)."""
    from billing import services

    started = time.monotonic()
    for position, (account, count) in enumerate(accounts):
        key, _ = services.key_create(account=account, name="volume")
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count) - 1
            params = {"seed": f"{position}-", "account_id": account.pk, "key_id": key.pk, "prefix": key.prefix}
            params |= {"snapshot_id": snapshot.pk, "count": max(count, 1), "days": days, "start": start, "stop": stop}
            cursor.execute(rows_sql, params)
            say(f"account {position}: {stop + 1:,} of {count:,} rows ({time.monotonic() - started:.0f} s)")


def timed(client, path: str, headers: dict, runs: int) -> tuple[float, float, int]:
    samples = []
    status = 0
    for _ in range(runs):
        began = time.perf_counter()
        response = client.get(path, **headers)
        samples.append((time.perf_counter() - began) * 1000)
        status = response.status_code
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1 if len(samples) > 1 else 0], status


def measure(target: dict, args) -> bool:
    from django.db import connection
    from django.test import Client

    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {target['secret']}"}
    base = f"/api/v1/accounts/{target['account_id']}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7 * 86400))
    month = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 86400))
    now = int(time.time())
    calls = [
        ("usage list, first page", f"{base}/usage"),
        ("usage list, model=claude-sonnet-4-6", f"{base}/usage?model=claude-sonnet-4-6"),
        ("usage list, status=502", f"{base}/usage?status=502"),
        ("usage list, error_class=quota_or_rate_limit", f"{base}/usage?error_class=quota_or_rate_limit"),
        ("usage list, last 7 days", f"{base}/usage?started_after={since}"),
        ("summary, 30 days by day and model", f"{base}/usage/summary?start={month}&bucket=day&group_by=model"),
        (
            "OpenAI completions usage, 30 × 1d",
            f"{base}/organization/usage/completions?start_time={now - 30 * 86400}&bucket_width=1d&limit=30",
        ),
    ]
    ok = True
    print(f"\n{'call':48} {'p50 ms':>8} {'p95 ms':>8} status  target < {TARGET_MS:.0f} ms")
    for name, path in calls:
        p50, p95, status = timed(client, path, headers, args.runs)
        passed = status == 200 and p50 < TARGET_MS
        ok = ok and passed
        print(f"{name:48} {p50:8.1f} {p95:8.1f} {status:6}  {'PASS' if passed else 'FAIL'}")
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT * FROM usage_usagerecord WHERE account_id = %s ORDER BY started_at DESC, request_id DESC "
            "LIMIT 51",
            [target["account_id"]],
        )
        print("\nthe list's plan:\n  " + "\n  ".join(row[0] for row in cursor.fetchall()))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="usage rows in all")
    parser.add_argument("--account-rows", type=int, default=1_000_000, help="rows of the measured account")
    parser.add_argument("--others", type=int, default=9, help="other accounts sharing the rest")
    parser.add_argument("--days", type=int, default=90, help="the rows span this many days, up to now")
    parser.add_argument("--runs", type=int, default=30, help="calls per measurement")
    parser.add_argument("--reuse", action="store_true", help="time the data already built (no rebuild)")
    args = parser.parse_args()
    url = database_url()
    if not args.reuse:
        recreate_database(url)
    setup_django(url)
    if args.reuse:
        from billing.models import Account
        from openbili.api.models import PersonalToken

        account = Account.objects.get(name="volume-owner-co")
        PersonalToken.objects.filter(user__username="volume-owner").delete()
        from tests.api.conftest import token_for

        target = {"account_id": account.pk, "secret": token_for(account.memberships.get().user)}
    else:
        target = build(args)
    rolled_up(args)
    return 0 if measure(target, args) else 1


def rolled_up(args) -> None:
    """The summaries' hourly roll-up (usage/rollup.py), as the beat job makes it: timed, since its
    first run over a big table is the one a deployment waits for once."""
    from usage.rollup import usage_rollup, watermark

    began = time.monotonic()
    hours = usage_rollup()
    elapsed = time.monotonic() - began
    say(f"roll-up: {hours:,} hour(s) computed in {elapsed:.1f} s, through {watermark():%Y-%m-%d %H:%M}")


if __name__ == "__main__":
    sys.exit(main())
