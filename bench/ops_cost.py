"""What the metrics and the per-request log line cost the request path (issue 15, Deliver 2).

    .venv/bin/python bench/ops_cost.py [--rounds 5] [--only nonstream_c32,stream_c8] [--seconds 8]
    .venv/bin/python bench/ops_cost.py --micro [--calls 200000]

One fake upstream, one database and key (bench/run.py's start_openbili), and three Openbili
processes side by side on them, differing only in their environment:

- `off`: OPENBILI_METRICS=0 OPENBILI_ACCESS_LOG=0 (what the request path cost before issue 15),
- `metrics`: the metrics on (multiprocess mode, PROMETHEUS_MULTIPROC_DIR), the log line off,
- `all`: both on — production's default (the log line written to the service's log file).

Each round runs every scenario against the three in a rotating order, back to back, and takes the
CPU of each process per completed request (psutil, as bench/run.py does). The machine's speed
drifts (bench/README.md), so the figures that count are the medians over rounds of the ratios
`metrics ÷ off` and `all ÷ off` within a round. Target: metrics ≤ 1.03 (3% CPU per request).
Writes bench/results/ops-cost.json.

The whole-gateway comparison is only as good as the machine is quiet: on a shared 2-core machine
the same process's CPU per request moves ±10% between runs a minute apart, more than the metrics
cost. `--micro` measures that cost directly and repeatably: the CPU time (time.process_time) of
the request's end (usage/gateway/observe.py: tally the metrics, write the log line) over many calls
on a finished chat request's context, with the metrics on or off and the log line written to a
file or off, in multiprocess mode with the once-a-second flush included (one flush per
`--per-flush` calls). Divided by the gateway's CPU per request, that is the share of the request's
CPU they take. Writes bench/results/ops-cost-micro.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE / "bench"))

import run  # noqa: E402

VARIANTS = {
    "off": {"OPENBILI_METRICS": "0", "OPENBILI_ACCESS_LOG": "0"},
    "metrics": {"OPENBILI_METRICS": "1", "OPENBILI_ACCESS_LOG": "0"},
    "all": {"OPENBILI_METRICS": "1", "OPENBILI_ACCESS_LOG": "1"},
}


def start_variant(base: run.Target, name: str, flags: dict[str, str]) -> run.Target:
    port = run.free_port()
    argv = list(base.service.argv)
    argv[argv.index("--port") + 1] = str(port)
    metrics_dir = run.VAR / f"metrics-{name}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = base.service.env | flags | {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "OPENBILI_LOG_FORMAT": "json"}
    # The log level the bench runs at hides INFO: the access line is INFO, so the `all` variant
    # must log at INFO to pay for it (uvicorn's own --log-level only concerns uvicorn's loggers).
    env["LOG_LEVEL"] = "INFO"
    service = run.Service(f"openbili-{name}", argv, env=env, log=run.VAR / f"openbili-{name}.log")
    url = f"http://127.0.0.1:{port}"
    key = base.key.split(",")[0]

    def ready() -> bool:
        status, body = run.http("GET", url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return status == 200 and b"bench-model" in body

    run.wait_port(port, service, 60)
    run.wait_ready(ready, service, 60, f"{name}: GET /v1/models")
    return run.Target(f"openbili-{name}", url, base.key, service, f"openbili-{name}")


MICRO = r"""
import json, logging, os, sys, time
from datetime import UTC, datetime
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")
import django
django.setup()
from openbili.ops import metrics
from openbili.ops.logs import ACCESS, JsonFormatter
from usage.gateway import observe
from usage.gateway.context import Ctx
from usage.gateway.state import GatewayState

calls, per_flush, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
access = logging.getLogger(ACCESS)
access.propagate = False
if log_path != "-":
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    access.addHandler(handler)
    access.setLevel(logging.INFO)
else:
    access.setLevel(logging.WARNING)
state = GatewayState()
state._catalog = {"gpt-5": object()}
scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [(b"user-agent", b"bench")]}
attempts = [{"attempt": 1, "route_id": 3, "provider": "openai", "upstream_model": "gpt-5", "status": 200, "error": "",
             "ms": 12.5}]


class Key:
    id, account_id, prefix = 7, 42, "sk-ob-AbCdEf"


def finished_context():
    ctx = Ctx(scope)
    ctx.key = Key()
    row = ctx.new_row(model="gpt-5")
    row.update(route_id=3, provider="openai", upstream_model="gpt-5", status=200, input_tokens=12, output_tokens=40,
               billing_result="billed", cost_usd="0.000415", finished_at=datetime.now(UTC))
    ctx.label, ctx.status = "/v1/chat/completions", 200
    ctx.attempts, ctx.upstream_seconds = attempts, 0.0125
    return ctx


contexts = [finished_context() for _ in range(1000)]  # made outside the timing: the gateway makes its own
for ctx in contexts[:50]:
    observe.finished(state, ctx)  # warm: the label children exist, the files are open
metrics.TALLY.flush()
started = time.process_time()
for i in range(calls):
    observe.finished(state, contexts[i % 1000])
    if i % per_flush == per_flush - 1:
        metrics.TALLY.flush()
metrics.TALLY.flush()
print(json.dumps({"us_per_call": (time.process_time() - started) / calls * 1e6}))
"""


def micro(args: argparse.Namespace) -> int:
    """The request's end alone, in a process of its own per variant (metrics cannot be switched
    within one: OPENBILI_METRICS is read at import), a few repeats each, medians printed."""
    import os
    import subprocess
    import tempfile

    variants = {"off": ("0", False), "metrics": ("1", False), "all": ("1", True)}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="ops-cost-") as scratch:
        for repeat in range(args.repeats):
            for name, (enabled, logged) in variants.items():
                directory = Path(scratch) / f"metrics-{name}-{repeat}"
                directory.mkdir()
                env = dict(os.environ, OPENBILI_METRICS=enabled, PROMETHEUS_MULTIPROC_DIR=str(directory))
                env.setdefault("OPENBILI_INSECURE_DEV_SECRET", "1")
                log = str(Path(scratch) / f"{name}-{repeat}.log") if logged else "-"
                argv = [sys.executable, "-c", MICRO, str(args.calls), str(args.per_flush), log]
                out = subprocess.run(argv, cwd=BASE, env=env, capture_output=True, text=True, check=True).stdout
                figures[name].append(json.loads(out.strip().splitlines()[-1])["us_per_call"])
    medians = {name: statistics.median(values) for name, values in figures.items()}
    cpu_ms = args.request_cpu_ms
    lines = [f"request's end, µs of CPU per request (median of {args.repeats}; {args.calls:,} calls each):"]
    for name, value in medians.items():
        added = value - medians["off"]
        lines.append(
            f"  {name:8} {value:7.2f} µs   over off {added:6.2f} µs = {added / (cpu_ms * 1000) * 100:5.2f}% "
            f"of a {cpu_ms} ms request   (runs: {', '.join(f'{v:.2f}' for v in figures[name])})"
        )
    metrics_share = (medians["metrics"] - medians["off"]) / (cpu_ms * 1000)
    verdict = "PASS" if metrics_share <= 0.03 else "FAIL"
    lines.append(f"  [{verdict}] metrics CPU per request: {metrics_share * 100:.2f}% (<= 3%)")
    print("\n".join(lines), flush=True)
    output = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "calls": args.calls, "medians_us": medians}
    output |= {"runs_us": figures, "request_cpu_ms": cpu_ms, "metrics_share": metrics_share}
    Path(args.output.replace("ops-cost.json", "ops-cost-micro.json")).write_text(json.dumps(output, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro", action="store_true", help="time the request's end alone (see above)")
    parser.add_argument("--calls", type=int, default=200_000, help="--micro: calls per variant and repeat")
    parser.add_argument(
        "--per-flush", type=int, default=1000, help="--micro: calls per tally flush (1 s at 1,000 req/s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--micro: runs of each variant")
    parser.add_argument(
        "--request-cpu-ms", type=float, default=0.5, help="--micro: the gateway's CPU per request to compare with"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="nonstream_c32,stream_c8")
    parser.add_argument("--seconds", type=float, default=8.0, help="each measurement's duration")
    parser.add_argument("--output", default=str(run.RESULTS / "ops-cost.json"))
    args = parser.parse_args(argv)
    if args.micro:
        return micro(args)
    bench_args = run.parse_args(["--only", args.only])
    run.VAR.mkdir(parents=True, exist_ok=True)
    monitor = run.Monitor()
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        scenarios = [
            run.Scenario(**{**s.__dict__, "duration": args.seconds})
            for s in run.select(run.scenarios(False), args.only)
        ]
        upstream, upstream_url = run.start_upstream(bench_args)
        monitor.add("upstream", lambda: run.tree(upstream.pid))
        monitor.add("postgres", run.postgres_processes, periodic=False)
        monitor.add("driver", run.driver_processes)
        base = run.start_openbili(bench_args, upstream_url)
        targets = [start_variant(base, name, flags) for name, flags in VARIANTS.items()]
        base.service.stop()  # its database and key stay: the variants share them
        for target in targets:
            monitor.add(target.cpu_group, lambda pid=target.service.pid: run.tree(pid))
        monitor.start()
        for round_ in range(args.rounds):
            order = targets[round_ % 3 :] + targets[: round_ % 3]
            for scenario in scenarios:
                for target in order:
                    result = run.measure(target, scenario, monitor, stagger_ms=bench_args.stagger_ms)
                    results.setdefault(scenario.name, {}).setdefault(target.name, []).append(result)
                    run.say(
                        f"round {round_ + 1} {scenario.name} {target.name}: {result['rps']:.0f} req/s, "
                        f"{result['cpu_ms_per_request']:.3f} ms CPU/req, {result['errors']} errors"
                    )
    finally:
        monitor.stop()
        for service in reversed(run.STARTED):
            service.stop()
    summary = {}
    lines = ["", "scenario        variant   req/s  CPU ms/req  ÷ off (median of rounds)"]
    for scenario, by_target in results.items():
        off = by_target["openbili-off"]
        summary[scenario] = {}
        for name in VARIANTS:
            runs = by_target[f"openbili-{name}"]
            ratios = [r["cpu_ms_per_request"] / o["cpu_ms_per_request"] for r, o in zip(runs, off, strict=True)]
            entry = {
                "rps": statistics.median(r["rps"] for r in runs),
                "cpu_ms_per_request": statistics.median(r["cpu_ms_per_request"] for r in runs),
                "cpu_ratio_to_off": round(statistics.median(ratios), 4),
                "cpu_ratios": [round(x, 4) for x in ratios],
                "errors": sum(r["errors"] for r in runs),
            }
            summary[scenario][name] = entry
            lines.append(
                f"{scenario:15} {name:8} {entry['rps']:7.0f} {entry['cpu_ms_per_request']:10.3f}  "
                f"{entry['cpu_ratio_to_off']:.3f}  {entry['cpu_ratios']}"
            )
    verdicts = []
    for scenario, entry in summary.items():
        ratio = entry["metrics"]["cpu_ratio_to_off"]
        verdict = "PASS" if ratio <= 1.03 else "FAIL"
        verdicts.append(f"  [{verdict}] metrics CPU/request ({scenario}): {ratio:.3f} (<= 1.03)")
    print("\n".join([*lines, "", *verdicts]), flush=True)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    output = {"machine": run.machine_info(), "at": at, "rounds": args.rounds, "seconds": args.seconds}
    Path(args.output).write_text(json.dumps(output | {"summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
