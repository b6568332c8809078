"""The usage table at scale (issue 15): the same rows unpartitioned and partitioned by month.

    .venv/bin/python bench/usage_partitions.py build         # 20,000,000 rows over 13 months, schema before 0010
    .venv/bin/python bench/usage_partitions.py measure       # times the hot path and the usage page
    .venv/bin/python bench/usage_partitions.py partition     # runs migration 0010 on those rows (timed)
    .venv/bin/python bench/usage_partitions.py measure       # the same timings, partitioned
    .venv/bin/python bench/usage_partitions.py all           # the four in a row

Everything happens in its own database (`--db`, default `openbili_partitions`, on the server of
DATABASE_URL). `build` migrates it to usage 0009 (the table as it was before partitioning), makes
1 + `--others` accounts with a key each, then the rows with `INSERT … SELECT` over
`generate_series` (bench/usage_volume.py's rows, over `--days` days up to now, the measured
account's share `--account-rows`), with the indexes dropped during the load and rebuilt after,
then ANALYZE and the hourly roll-up. Request ids are uuid4-shaped, as the gateway made them before
migration 0010. `partition` then converts that table exactly as a deployment would (`migrate`),
so the same rows are measured on both schemas.

`measure` prints, and writes to bench/results/usage_partitions-<schema>.json:
- the hot path: the gateway's own reserve and settle statements (usage/gateway/sql.py
  RESERVE_ONE and SETTLE_ONE) on one psycopg connection, `--iterations` requests one after the
  other, median and p95 per statement: planned every time (custom: never prepared), prepared
  with a generic plan (plan_cache_mode = force_generic_plan), and as the gateway's pool runs
  them (auto: psycopg prepares on the 5th execution, PostgreSQL then picks custom or generic
  plans itself; the counts of each are printed), and so with the gateway pool's settings
  (usage/gateway/state.py POOL_OPTIONS: generic plans); request ids of the shape the schema's gateway
  makes (uuid4 before 0010, time-carrying after: usage/gateway/ids.py), or `--ids` forced, to
  tell the ids' part from the partitions' (`--hot-path-only` skips the usage page);
- EXPLAIN ANALYZE of the generic settle (which partitions it touches);
- the usage page through Django's test client, as bench/usage_volume.py times it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BASE))

from bench import usage_volume  # noqa: E402

RESULTS = BASE / "bench" / "results"

ROWS = usage_volume.ROWS  # uuid4-shaped request ids, as the gateway made them before migration 0010


def database_url(db: str) -> str:
    return urlunsplit(urlsplit(usage_volume.database_url())._replace(path=f"/{db}"))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def schema(cursor) -> str:
    cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'usage_usagerecord'")
    return "partitioned" if cursor.fetchone()[0] == "p" else "unpartitioned"


def build(args) -> None:
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connection

    from billing import services
    from billing.models import CatalogModel
    from tests.api.conftest import Caller
    from tests.factories import AccountFactory

    say("migrations (usage up to 0009: the table before partitioning)")
    call_command("migrate", "usage", "0009", verbosity=0)
    for app in apps.get_app_configs():
        if app.label != "usage" and Path(app.path, "migrations").is_dir():
            call_command("migrate", app.label, verbosity=0)
    model = CatalogModel.objects.create(name="gpt-5", context_window=400_000, max_output_tokens=128_000)
    version, _ = services.price_version_publish(model=model, prices={"input_per_mtok": "1.25", "output_per_mtok": "10"})
    snapshot = services.price_snapshot_for(version)
    owner = Caller("volume-owner")
    accounts = [(owner.account, args.account_rows)]
    others = max(args.rows - args.account_rows, 0)
    for index in range(args.others):
        accounts.append((AccountFactory(name=f"other-{index}"), others // args.others))
    # The hot path's account: enough credit for every reserve the measurements make.
    hot = AccountFactory(name="hot-path", credit=Decimal("1000000"))
    services.key_create(account=hot, name="hot")
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'usage_usagerecord' "
            "AND indexname <> 'usage_usagerecord_pkey'"
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'usage_usagerecord'::regclass AND contype = 'u'"
        )
        uniques = cursor.fetchall()
        for name, _ in uniques:
            cursor.execute(f"ALTER TABLE usage_usagerecord DROP CONSTRAINT {name}")
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
        usage_volume.insert_rows(cursor, accounts, snapshot, days=args.days, rows_sql=ROWS)
        say(f"rows loaded in {time.monotonic() - started:.0f} s; rebuilding the indexes")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in uniques:
            cursor.execute(f"ALTER TABLE usage_usagerecord ADD CONSTRAINT {name} {definition}")
        for name, definition in indexes:
            if name not in {u for u, _ in uniques}:
                cursor.execute(definition)
        cursor.execute("VACUUM ANALYZE usage_usagerecord")
    say(f"built in {time.monotonic() - started:.0f} s")
    usage_volume.rolled_up(args)


def partition(args) -> None:
    from django.core.management import call_command

    began = time.monotonic()
    call_command("migrate", verbosity=1)
    elapsed = time.monotonic() - began
    say(f"migration 0010 (and any after it) on {args.rows:,} rows: {elapsed:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "usage_partitions-migration.json").write_text(json.dumps({"seconds": round(elapsed, 1)}) + "\n")


# --- measure ---------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def explain_prepared(conn, statement: str, params: dict) -> list[str]:
    """EXPLAIN ANALYZE of `statement` as a PREPAREd statement EXECUTEd, so that the plan is the
    generic one (an EXPLAIN of the statement itself is planned with its values)."""
    import psycopg

    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    conn.execute("PREPARE probe AS " + re.sub(r"%\((\w+)\)s", number, statement), prepare=False)
    args = ", ".join(["%s"] * len(names))
    explained = (
        psycopg.ClientCursor(conn)  # EXECUTE's arguments as literals: a NULL has no type as a parameter
        .execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE probe({args})", [params[n] for n in names])
        .fetchall()
    )
    conn.execute("DEALLOCATE probe", prepare=False)
    return [line for (line,) in explained]


def hot_path_target(conninfo: str) -> dict:
    """The hot-path account's ids in one database (built by `build`)."""
    import psycopg

    with psycopg.connect(conninfo) as conn:
        account_id, key_id, prefix = conn.execute(
            "SELECT a.id, k.id, k.prefix FROM billing_account a JOIN billing_apikey k ON k.account_id = a.id "
            "WHERE a.name = 'hot-path'"
        ).fetchone()
        (snapshot_id,) = conn.execute("SELECT min(id) FROM billing_pricesnapshot").fetchone()
    return {"conninfo": conninfo, "account_id": account_id, "key_id": key_id, "prefix": prefix, "snapshot": snapshot_id}


def reserve_params(target: dict, time_ids: bool) -> dict:
    """sql.RESERVE_ONE's parameters, as the gateway sends them for one chat completion."""
    from usage.gateway import ids

    started = datetime.now(UTC)
    request_id = ids.request_id(started) if time_ids else "req_" + uuid.uuid4().hex
    return {
        "request_id": request_id, "trace_id": "trace_" + uuid.uuid4().hex, "account_id": target["account_id"],
        "api_key_id": target["key_id"], "key_prefix": target["prefix"], "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-5", "stream": False, "max_tokens_requested": None, "max_tokens_applied": 1000,
        "price_snapshot_id": target["snapshot"], "started_at": started, "user_agent": "bench",
        "amount": Decimal("0.02"), "ttl_seconds": 600,
    }  # fmt: skip


def settle_params(row: dict, hold_id: int) -> dict:
    """sql.SETTLE_ONE's parameters for the request of `row`, billed."""
    now = datetime.now(UTC)
    return {
        "request_id": row["request_id"], "hold_id": hold_id, "cost": Decimal("0.000205"),
        "billing_result": "billed", "route_id": None, "provider": "openai", "upstream_model": "gpt-5",
        "status": 200, "error_class": "", "error_code": "", "error_message": "", "input_tokens": 100,
        "output_tokens": 10, "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "image_count": 0, "tokens_estimated": False, "output_reached_client": True,
        "client_disconnected_at": None, "first_byte_at": now, "finished_at": now, "attempts": "[]",
        "response_id": "", "started_at": row["started_at"],
    }  # fmt: skip


MODES = ("custom", "generic", "auto", "gateway")


def connect(conninfo: str, mode: str):
    """A connection that plans as `mode` says: custom (never prepared: planned every time),
    generic (prepared at once, plan_cache_mode = force_generic_plan), auto (psycopg prepares on
    the 5th execution, then PostgreSQL picks custom or generic plans itself) or gateway (auto with
    the gateway pool's settings, usage/gateway/state.py POOL_OPTIONS)."""
    import psycopg

    from usage.gateway.state import POOL_OPTIONS

    conn = psycopg.connect(conninfo, autocommit=True, options=POOL_OPTIONS if mode == "gateway" else "")
    if mode == "generic":
        conn.prepare_threshold = 0
        conn.execute("SET plan_cache_mode = force_generic_plan")
    elif mode == "custom":
        conn.prepare_threshold = None
    return conn


def one_request(conn, target: dict, time_ids: bool) -> tuple[float, float]:
    """Reserve then settle one request: the two statements' times (ms)."""
    from usage.gateway import sql

    row = reserve_params(target, time_ids)
    began = time.perf_counter()
    [(_, hold_id)] = conn.execute(sql.RESERVE_ONE, row).fetchall()
    middle = time.perf_counter()
    settled = conn.execute(sql.SETTLE_ONE, settle_params(row, hold_id)).fetchall()
    ended = time.perf_counter()
    assert len(settled) == 1, settled
    return (middle - began) * 1000, (ended - middle) * 1000


def plans_of(conn) -> list:
    return conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements ORDER BY statement").fetchall()


def hot_path(args, time_ids: bool) -> dict:
    """RESERVE_ONE then SETTLE_ONE per request, each statement timed on its own."""
    from django.conf import settings

    from usage.gateway import sql

    db = settings.DATABASES["default"]
    target = hot_path_target(f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']}")
    out: dict = {}
    for mode in MODES:
        with connect(target["conninfo"], mode) as conn:
            reserve_ms, settle_ms = [], []
            for index in range(args.warmup + args.iterations):
                reserve, settle = one_request(conn, target, time_ids)
                if index >= args.warmup:
                    reserve_ms.append(reserve)
                    settle_ms.append(settle)
            out[mode] = {"reserve": percentiles(reserve_ms), "settle": percentiles(settle_ms)}
            if mode in ("auto", "gateway"):
                out[mode]["plans (generic, custom)"] = plans_of(conn)
            if mode == "generic":
                row = reserve_params(target, time_ids)
                [(_, hold_id)] = conn.execute(sql.RESERVE_ONE, row).fetchall()
                out["settle_plan"] = explain_prepared(conn, sql.SETTLE_ONE, settle_params(row, hold_id))
    return out


def compare(args) -> None:
    """The hot path on two databases at once, request by request in turn (each database first
    every other time), so that both see the same load from whatever else the machine runs."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    conninfos = [f"host={db['HOST']} port={db['PORT']} dbname={name} user={db['USER']}" for name in args.compare]
    targets = [hot_path_target(conninfo) for conninfo in conninfos]
    kinds = []
    for target in targets:
        with connect(target["conninfo"], "custom") as conn:
            kinds.append(schema(conn.cursor()))
    result: dict = {
        "databases": dict(zip(args.compare, kinds, strict=True)),
        "ids": args.ids,
        "measured_at": now_text(),
    }
    print(f"\n{'statement':24} " + " ".join(f"{kind + ' p50':>20} {'p95':>8}" for kind in kinds))
    for mode in MODES:
        conns = [connect(target["conninfo"], mode) for target in targets]
        samples: list[dict[str, list[float]]] = [{"reserve": [], "settle": []} for _ in targets]
        for index in range(args.warmup + args.iterations):
            order = range(len(targets)) if index % 2 else reversed(range(len(targets)))
            for which in order:
                kind = kinds[which]
                time_ids = args.ids == "time" or (args.ids == "schema" and kind == "partitioned")
                reserve, settle = one_request(conns[which], targets[which], time_ids)
                if index >= args.warmup:
                    samples[which]["reserve"].append(reserve)
                    samples[which]["settle"].append(settle)
        result[mode] = {}
        for which, conn in enumerate(conns):
            figures = {statement: percentiles(times) for statement, times in samples[which].items()}
            if mode in ("auto", "gateway"):
                figures["plans (generic, custom)"] = plans_of(conn)
            result[mode][kinds[which]] = figures
            conn.close()
        for statement in ("reserve", "settle"):
            cells = " ".join(
                f"{result[mode][kind][statement]['p50_ms']:20.3f} {result[mode][kind][statement]['p95_ms']:8.3f}"
                for kind in kinds
            )
            print(f"{statement + ' (' + mode + ')':24} {cells}")
        if mode in ("auto", "gateway"):
            print(
                "  (generic, custom) plans: "
                + "; ".join(f"{k} {result[mode][k]['plans (generic, custom)']}" for k in kinds)
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"usage_partitions-compare-{args.ids}-ids.json").write_text(json.dumps(result, indent=2) + "\n")


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def page(args) -> dict:
    from django.test import Client

    from billing.models import Account
    from openbili.api.models import PersonalToken
    from tests.api.conftest import token_for

    account = Account.objects.get(name="volume-owner-co")
    PersonalToken.objects.filter(user__username="volume-owner").delete()
    secret = token_for(account.memberships.get().user)
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    base = f"/api/v1/accounts/{account.pk}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7 * 86400))
    month = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 86400))
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 200 * 86400))
    old_end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 190 * 86400))
    now = int(time.time())
    calls = [
        ("usage list, first page", f"{base}/usage"),
        ("usage list, model=claude-sonnet-4-6", f"{base}/usage?model=claude-sonnet-4-6"),
        ("usage list, status=502", f"{base}/usage?status=502"),
        ("usage list, error_class=quota_or_rate_limit", f"{base}/usage?error_class=quota_or_rate_limit"),
        ("usage list, last 7 days", f"{base}/usage?started_after={since}"),
        ("usage list, 10 days 200 days ago", f"{base}/usage?started_after={old}&started_before={old_end}"),
        ("summary, 30 days by day and model", f"{base}/usage/summary?start={month}&bucket=day&group_by=model"),
        (
            "OpenAI completions usage, 30 × 1d",
            f"{base}/organization/usage/completions?start_time={now - 30 * 86400}&bucket_width=1d&limit=30",
        ),
    ]
    out = {}
    for name, path in calls:
        p50, p95, status = usage_volume.timed(client, path, headers, args.runs)
        assert status == 200, (path, status)
        out[name] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
    return out


def measure(args) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        kind = schema(cursor)
        cursor.execute("SELECT count(*) FROM usage_usagerecord")
        (rows,) = cursor.fetchone()
        cursor.execute("SELECT pg_total_relation_size('usage_usagerecord')")
        (size,) = cursor.fetchone()
        if kind == "partitioned":
            cursor.execute(
                "SELECT count(*), sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                "WHERE inhparent = 'usage_usagerecord'::regclass"
            )
            partitions, size = cursor.fetchone()
            size = int(size)
        else:
            partitions = 0
    say(f"{kind}: {rows:,} rows, {size / 2**30:.1f} GiB with indexes, {partitions} partitions")
    result = {
        "schema": kind,
        "rows": rows,
        "partitions": partitions,
        "bytes": size,
        "measured_at": now_text(),
        "ids": args.ids if args.ids != "schema" else ("time" if kind == "partitioned" else "uuid4"),
    }
    result["hot_path"] = hot_path(args, result["ids"] == "time")
    if not args.hot_path_only:
        result["page"] = page(args)
    RESULTS.mkdir(exist_ok=True)
    name = kind if args.ids == "schema" else f"{kind}-{args.ids}-ids"
    (RESULTS / f"usage_partitions-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'statement (' + result['ids'] + ' ids)':32} {'p50 ms':>8} {'p95 ms':>8}")
    for mode in ("custom", "generic", "auto", "gateway"):
        for statement in ("reserve", "settle"):
            figures = result["hot_path"][mode][statement]
            print(f"{statement + ' (' + mode + ' plan)':32} {figures['p50_ms']:8.3f} {figures['p95_ms']:8.3f}")
    print("\nthe generic settle's plan:\n  " + "\n  ".join(result["hot_path"]["settle_plan"]))
    for mode in ("auto", "gateway"):
        plans = result["hot_path"][mode]["plans (generic, custom)"]
        print(f"{mode}: (generic, custom) plans per prepared statement: {plans}")
    print(f"\n{'call':48} {'p50 ms':>8} {'p95 ms':>8}")
    for name, figures in result.get("page", {}).items():
        print(f"{name:48} {figures['p50_ms']:8.1f} {figures['p95_ms']:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["build", "measure", "partition", "all", "compare"])
    parser.add_argument("--compare", nargs=2, metavar="DB", help="compare: the two databases to time in turn")
    parser.add_argument("--db", default="openbili_partitions", help="the benchmark's own database")
    parser.add_argument("--rows", type=int, default=20_000_000, help="usage rows in all")
    parser.add_argument("--account-rows", type=int, default=2_000_000, help="rows of the measured account")
    parser.add_argument("--others", type=int, default=9, help="other accounts sharing the rest")
    parser.add_argument("--days", type=int, default=395, help="the rows span this many days, up to now")
    parser.add_argument("--runs", type=int, default=30, help="calls per usage page measurement")
    parser.add_argument("--iterations", type=int, default=2000, help="requests per hot-path measurement")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the timed ones")
    parser.add_argument(
        "--ids",
        choices=["schema", "uuid4", "time"],
        default="schema",
        help="request ids of the hot path: as the schema's gateway makes them (default), or forced",
    )
    parser.add_argument("--hot-path-only", action="store_true", help="measure the hot path, not the usage page")
    args = parser.parse_args()
    usage_volume.DB = args.db
    url = database_url(args.db)
    if args.step in ("build", "all"):
        usage_volume.recreate_database(url)
    usage_volume.setup_django(url)
    if args.step in ("build", "all"):
        build(args)
    if args.step in ("measure", "all"):
        measure(args)
    if args.step in ("partition", "all"):
        partition(args)
    if args.step == "all":
        measure(args)
    if args.step == "compare":
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
