"""What the metrics and the per-request log line cost the request path (issue 15, Deliver 2).

    .venv/bin/python bench/ops_cost.py [--rounds 5] [--only nonstream_c32,stream_c8] [--seconds 8]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="nonstream_c32,stream_c8")
    parser.add_argument("--seconds", type=float, default=8.0, help="each measurement's duration")
    parser.add_argument("--output", default=str(run.RESULTS / "ops-cost.json"))
    args = parser.parse_args(argv)
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
