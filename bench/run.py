"""One command: the gateway's cost against the upstream alone, a bare proxy and LiteLLM, in one run.

    .venv/bin/python bench/run.py [--quick] [--litellm] [--soak SECONDS] [--workers N] [--profile]

Starts a fake upstream speaking OpenAI chat, Responses and Images and Anthropic Messages
(bench/upstream.py), the floor (bench/floor.py: a bare proxy on the gateway's stack, uvicorn + one
aiohttp session, nothing else), Openbili with full billing on a fresh `openbili_bench` database
(uvicorn, N workers; `bench-model` on an OpenAI route, `claude-sonnet-4-6` on an Anthropic route,
`bench-image` on an OpenAI image route, its images stored under var/bench/images) and, with
--litellm, a LiteLLM proxy
(its own throwaway virtualenv under var/bench/litellm-venv, no database) routed to the same
upstream. Then runs each scenario against the upstream alone, the floor, Openbili and LiteLLM back
to back, measuring latency and TTFB percentiles from the client (bench/load.py) and, with psutil,
the CPU seconds of each target's process tree, of every `postgres` process and the peak RSS, per
scenario. Scenarios come in groups (GROUPS: chat on an OpenAI route, /v1/messages and chat on an
Anthropic route, /v1/responses on both, image generations), four loads each (two for images).
Prints a table per scenario, the ratios Openbili ÷ LiteLLM and Openbili ÷ floor and the PASS/FAIL
lines, writes bench/results/latest.json. With --soak SECONDS it
then drives every /v1 entry point mixed (SOAK_MIX) on accounts of its own while the fake upstream
faults 5% of its calls, and checks what the soak left: a usage row per request, none pending, no
open hold, the ledger reconciled, the gateway's RSS flat (soak()). Everything it started is
stopped at the end, also on Ctrl-C or an error. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE / "bench"))

import load  # noqa: E402
from load import body_for  # noqa: E402

PY = sys.executable
VAR = BASE / "var" / "bench"
RESULTS = BASE / "bench" / "results"
LITELLM_VENV = VAR / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]==1.108.7"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "openbili_bench"
BENCH_DB_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
BENCH_REDIS_URL = "redis://127.0.0.1:6379/13"  # the suite takes 15 and 14 (tests/worker_env.py)
UPSTREAM_SECRET_ENV = "OPENBILI_BENCH_UPSTREAM_KEY"
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
RESPONSES_PATH = "/v1/responses"
IMAGES_PATH = "/v1/images/generations"
CHAT_MODEL = "bench-model"  # OpenAI route
CLAUDE_MODEL = "claude-sonnet-4-6"  # Anthropic route
IMAGE_MODEL = "bench-image"  # OpenAI image route (gpt-image's wire format: it answers b64_json)
IMAGES_DIR = VAR / "images"  # Openbili's image storage during the bench (emptied at every start)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


STARTED: list[Service] = []


class Service:
    """A child process in its own process group, output to a log file; stop() ends the whole group.

    Every Service ever started is in STARTED, so main() stops them all, whatever failed where.
    """

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path = BASE) -> None:
        self.name = name
        self.log_path = log
        self.argv, self.env = argv, env  # bench/ops_cost.py starts variants of a service from them
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.proc.pid
        STARTED.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int, limit: int = 40) -> list[str]:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return lines[:limit]

    def stop(self, timeout: float = 15.0) -> None:
        if self._log.closed:  # stopped already
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        # Whatever is left in the group (workers of a killed master, ...) is killed outright.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited (code {service.proc.returncode}); see {service.log_path}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name}: nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def http(method: str, url: str, *, body: bytes | None = None, headers: dict | None = None, timeout: float = 10.0):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(check: Callable[[], bool], service: Service, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited (code {service.proc.returncode}); see {service.log_path}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{service.name}: {what} not ready after {timeout:.0f}s {last_error}")


# --------------------------------------------------------------------------------------------------
# CPU and memory of process trees
# --------------------------------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def postgres_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            found.append(proc)
    return found


class Monitor:
    """Samples CPU seconds and RSS of named process groups every 0.5 s in a thread.

    CPU of a group over a window = sum over its processes of (latest cpu - cpu at window start),
    processes born during the window counting from 0, so short-lived children are included up to
    their last sample. RSS of a group = sum of its processes' RSS; the window keeps the peak.

    Kept cheap, because it shares the 2 cores with what it measures: the periodic samples read only
    the cached processes of the "periodic" groups (the targets, the upstream, the driver) and
    refresh those process lists every 2 s; the postgres group (dozens of processes, found by
    scanning /proc) is read only at the start and the end of a window.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.groups: dict[str, Callable[[], list[psutil.Process]]] = {}
        self.periodic: dict[str, bool] = {}
        self.procs: dict[str, list[psutil.Process]] = {}
        self.interval = interval
        self.lock = threading.Lock()
        self.cpu: dict[str, dict[int, float]] = {}
        self.rss: dict[str, dict[int, int]] = {}
        self.peak_rss: dict[str, int] = {}
        self.peak_proc_rss: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def add(self, name: str, finder: Callable[[], list[psutil.Process]], periodic: bool = True) -> None:
        with self.lock:
            self.groups[name] = finder
            self.periodic[name] = periodic
            self.procs[name] = []
            self.cpu[name] = {}
            self.rss[name] = {}
            self.peak_rss[name] = 0
            self.peak_proc_rss[name] = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # a run that failed during setup never started it
            self._thread.join(timeout=5)

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            self.sample(refresh=count % 4 == 0, periodic_only=True)

    def sample(self, refresh: bool = True, periodic_only: bool = False) -> None:
        with self.lock:
            for name, finder in self.groups.items():
                if periodic_only and not self.periodic[name]:
                    continue
                if refresh or not self.procs[name]:
                    self.procs[name] = finder()
                total_rss = 0
                rss_now: dict[int, int] = {}
                for proc in self.procs[name]:
                    try:
                        with proc.oneshot():
                            times = proc.cpu_times()
                            mem = proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    self.cpu[name][proc.pid] = times.user + times.system
                    rss_now[proc.pid] = mem
                    total_rss += mem
                self.rss[name] = rss_now
                self.peak_rss[name] = max(self.peak_rss[name], total_rss)
                if rss_now:
                    self.peak_proc_rss[name] = max(self.peak_proc_rss[name], max(rss_now.values()))

    def mark(self) -> dict[str, Any]:
        """Start a window: fresh sample, peaks reset; returns the CPU baseline."""
        self.sample()
        with self.lock:
            for name in self.groups:
                self.peak_rss[name] = sum(self.rss[name].values())
                self.peak_proc_rss[name] = max(self.rss[name].values(), default=0)
            return {
                "cpu": {name: dict(per_pid) for name, per_pid in self.cpu.items()},
                "host": psutil.cpu_times(),
                "at": time.monotonic(),
            }

    def since(self, mark: dict[str, Any]) -> dict[str, Any]:
        """CPU seconds per group, peak RSS per group and host busy share since mark()."""
        self.sample()
        host_now = psutil.cpu_times()
        with self.lock:
            cpu, cpu_by_pid = {}, {}
            for name, per_pid in self.cpu.items():
                base = mark["cpu"].get(name, {})
                deltas = {pid: max(0.0, value - base.get(pid, 0.0)) for pid, value in per_pid.items()}
                cpu[name] = sum(deltas.values())
                cpu_by_pid[name] = {pid: round(d, 3) for pid, d in deltas.items() if d > 0}
            host_before = mark["host"]
            busy = sum(host_now) - host_now.idle - getattr(host_now, "iowait", 0.0)
            busy_before = sum(host_before) - host_before.idle - getattr(host_before, "iowait", 0.0)
            total = sum(host_now) - sum(host_before)
            breakdown = {
                field_: round(100 * (getattr(host_now, field_) - getattr(host_before, field_)) / total, 1)
                for field_ in host_now._fields
                if total > 0
            }
            return {
                "host_breakdown_pct": breakdown,
                "cpu_s": cpu,
                "cpu_s_by_pid": cpu_by_pid,
                "peak_rss": dict(self.peak_rss),
                "peak_proc_rss": dict(self.peak_proc_rss),
                "host_busy": (busy - busy_before) / total if total > 0 else 0.0,
                "seconds": time.monotonic() - mark["at"],
            }

    def rss_by_pid(self, name: str) -> dict[int, int]:
        self.sample(periodic_only=True)
        with self.lock:
            return dict(self.rss[name])


def drive(on_start: Callable[[], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """bench/load.py's run_load in a child process (so that psutil sampling here never delays it).

    ``on_start`` runs here once the child finished its warm-up, before it starts measuring.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=load.process_main, args=(child, kwargs), name="bench-driver", daemon=True)
    proc.start()
    DRIVER_PIDS[:] = [proc.pid]
    bound = kwargs.get("timeout", 30.0) * 3 + kwargs.get("duration", 10.0) + 120
    try:
        while True:
            if not parent.poll(bound):
                raise RuntimeError(f"the load driver did not report within {bound:.0f}s")
            message = parent.recv()
            if message == "warm":
                if on_start is not None:
                    on_start()
                parent.send("go")
                continue
            if "driver_error" in message:
                raise RuntimeError(f"load driver failed: {message['driver_error']}")
            return message
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        DRIVER_PIDS[:] = []


DRIVER_PIDS: list[int] = []


def driver_processes() -> list[psutil.Process]:
    found = []
    for pid in DRIVER_PIDS:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


# --------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base_url: str
    key: str
    service: Service
    cpu_group: str
    notes: dict[str, Any] = field(default_factory=dict)
    messages_auth: str = "x-api-key"  # how the key goes with /v1/messages ("x-api-key" or "bearer")
    soak_keys: list[tuple[str, str]] = field(default_factory=list)  # (account, key) of SOAK_ACCOUNTS

    def load_args(self, api: str) -> dict[str, Any]:
        """drive() arguments for one scenario group on this target (URL, model, wire format, auth).

        chat: OpenAI chat on bench-model (OpenAI route); messages: Anthropic Messages on the Claude
        model (pass-through); chat_claude: OpenAI chat on the Claude model (the gateway translates);
        responses / responses_claude: the OpenAI Responses API on the same two models (pass-through,
        translated); images: an image generation on bench-image (OpenAI image route).
        The upstream alone has no translation: for chat_claude and responses_claude it answers the
        Messages call the gateway makes upstream, so +x columns show what translation and billing
        add on top of it. The floor forwards without translating: its chat_claude is a chat
        pass-through, its responses_claude a Responses pass-through.
        """
        if api == "images":
            return {"url": self.base_url + IMAGES_PATH, "key": self.key, "model": IMAGE_MODEL, "api": "images"}
        if api == "messages" or (api in ("chat_claude", "responses_claude") and self.name == "upstream"):
            return {
                "url": self.base_url + MESSAGES_PATH,
                "key": self.key,
                "model": CLAUDE_MODEL,
                "api": "messages",
                "auth": self.messages_auth,
            }
        model = CLAUDE_MODEL if api in ("chat_claude", "responses_claude") else CHAT_MODEL
        if api in ("responses", "responses_claude"):
            return {"url": self.base_url + RESPONSES_PATH, "key": self.key, "model": model, "api": "responses"}
        return {"url": self.base_url + CHAT_PATH, "key": self.key, "model": model, "api": "chat", "auth": "bearer"}


def start_upstream(args: argparse.Namespace) -> tuple[Service, str]:
    port = free_port()
    argv = [PY, str(BASE / "bench" / "upstream.py"), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--latency-ms", str(args.upstream_latency_ms), "--chunks", str(args.chunks)]
    service = Service("upstream", argv, env=dict(os.environ), log=VAR / "upstream.log")
    wait_port(port, service, 20)
    return service, f"http://127.0.0.1:{port}"


def upstream_check(upstream: str, chunks: int) -> None:
    """The fake upstream speaks Anthropic Messages as the real API does, or the run stops here.

    Non-stream: a `message` with one text block and usage. Stream: message_start (usage with
    input_tokens), content_block_start, ping, content_block_delta (text_delta) x pieces,
    content_block_stop, message_delta (stop_reason, usage.output_tokens), message_stop.
    """
    headers = {"Content-Type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
    url = upstream + MESSAGES_PATH
    status, raw = http("POST", url, body=body_for(False, CLAUDE_MODEL, "messages"), headers=headers)
    data = json.loads(raw)
    if status != 200 or data.get("type") != "message" or data["content"][0]["type"] != "text" or "usage" not in data:
        raise RuntimeError(f"upstream /v1/messages (non-stream) is not Anthropic-shaped: {status} {raw[:300]!r}")
    status, raw = http("POST", url, body=body_for(True, CLAUDE_MODEL, "messages"), headers=headers)
    events = []
    for block in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        payload = json.loads(lines["data"])
        if payload["type"] != lines["event"]:
            raise RuntimeError(f"upstream stream: event {lines['event']} carries type {payload['type']}")
        events.append(payload)
    pieces = min(chunks, load.MESSAGES_PAYLOAD["max_tokens"])
    expected = ["message_start", "content_block_start", "ping", *["content_block_delta"] * pieces]
    expected += ["content_block_stop", "message_delta", "message_stop"]
    kinds = [e["type"] for e in events]
    if status != 200 or kinds != expected:
        raise RuntimeError(f"upstream /v1/messages stream: events {kinds}, expected {expected}")
    if not all(e["delta"]["type"] == "text_delta" for e in events if e["type"] == "content_block_delta"):
        raise RuntimeError("upstream /v1/messages stream: a content_block_delta is not a text_delta")
    if "input_tokens" not in events[0]["message"]["usage"] or "output_tokens" not in events[-2].get("usage", {}):
        raise RuntimeError("upstream /v1/messages stream: usage missing in message_start or message_delta")
    responses_check(upstream, pieces)
    images_check(upstream)


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) of each block of an event stream that names its events."""
    events = []
    for block in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event", ""), json.loads(lines["data"])))
    return events


def responses_check(upstream: str, pieces: int) -> None:
    """The fake upstream's /v1/responses: a `response` with a message item and usage; a stream of
    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta x pieces, the .done events and
    response.completed carrying the usage."""
    headers = load.headers_for("sk-bench")
    url = upstream + RESPONSES_PATH
    status, raw = http("POST", url, body=body_for(False, CHAT_MODEL, "responses"), headers=headers)
    data = json.loads(raw)
    if status != 200 or data.get("object") != "response" or data["output"][0]["type"] != "message" or not data["usage"]:
        raise RuntimeError(f"upstream /v1/responses (non-stream) is not Responses-shaped: {status} {raw[:300]!r}")
    status, raw = http("POST", url, body=body_for(True, CHAT_MODEL, "responses"), headers=headers)
    events = sse_events(raw)
    expected = ["response.created", "response.in_progress", "response.output_item.added"]
    expected += ["response.content_part.added", *["response.output_text.delta"] * pieces, "response.output_text.done"]
    expected += ["response.content_part.done", "response.output_item.done", "response.completed"]
    kinds = [name for name, _ in events]
    if status != 200 or kinds != expected or any(name != data["type"] for name, data in events):
        raise RuntimeError(f"upstream /v1/responses stream: events {kinds}, expected {expected}")
    if not events[-1][1]["response"].get("usage"):
        raise RuntimeError("upstream /v1/responses stream: no usage in response.completed")


def images_check(upstream: str) -> None:
    """The fake upstream's /v1/images/generations answers gpt-image's way: `data[].b64_json` (a PNG)."""
    status, raw = http(
        "POST",
        upstream + IMAGES_PATH,
        body=body_for(False, IMAGE_MODEL, "images"),
        headers=load.headers_for("sk-bench"),
    )
    data = json.loads(raw)
    item = data["data"][0] if status == 200 and data.get("data") else {}
    if not item.get("b64_json") or not base64.b64decode(item["b64_json"]).startswith(PNG_MAGIC):
        raise RuntimeError(f"upstream /v1/images/generations did not answer a b64_json PNG: {status} {raw[:300]!r}")


def start_floor(args: argparse.Namespace, upstream: str) -> Target:
    """bench/floor.py under the same uvicorn command line as Openbili (flags, workers, loop)."""
    port = free_port()
    argv = [PY, "-m", "uvicorn", "floor:app", "--app-dir", str(BASE / "bench"), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(args.workers), "--no-access-log", "--log-level", "warning"]
    env = dict(os.environ, OPENBILI_FLOOR_UPSTREAM=upstream, OPENBILI_FLOOR_UPSTREAM_KEY="sk-bench-upstream")
    say(f"floor: uvicorn bench/floor.py on 127.0.0.1:{port} with {args.workers} worker(s)")
    service = Service("floor", argv, env=env, log=VAR / "floor.log")
    base = f"http://127.0.0.1:{port}"
    body = body_for(False, CHAT_MODEL)

    def ready() -> bool:
        status, _ = http("POST", base + CHAT_PATH, body=body, headers={"Content-Type": "application/json"}, timeout=5)
        return status == 200

    wait_port(port, service, 30)
    wait_ready(ready, service, 30, "POST /v1/chat/completions")
    return Target("floor", base, "", service, "floor")


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PY, str(BASE / "manage.py"), *args], env=env, cwd=BASE, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


CATALOG = """\
# Written by bench/run.py: three models routed to the benchmark's fake upstream (OpenAI chat and
# Responses, Anthropic Messages, OpenAI Images).
[[models]]
name = "bench-model"
kind = "chat"
owned_by = "openbili-bench"
context_window = 128000
max_output_tokens = 4096

[models.prices]
input_per_mtok = "1.25"
output_per_mtok = "10.00"

[[models.routes]]
name = "bench-upstream"
provider = "openai"
base_url = "{upstream}/v1"
upstream_model = "bench-model"
secret_env = "{secret_env}"
priority = 1

[[models]]
name = "claude-sonnet-4-6"
kind = "chat"
owned_by = "anthropic"
context_window = 200000
max_output_tokens = 64000

[models.prices]
input_per_mtok = "3.00"
output_per_mtok = "15.00"
cached_input_per_mtok = "0.30"
cache_write_per_mtok = "3.75"

[[models.routes]]
name = "bench-anthropic"
provider = "anthropic"
base_url = "{upstream}"
upstream_model = "claude-sonnet-4-6"
secret_env = "{secret_env}"
priority = 1

[[models]]
name = "bench-image"
kind = "image"
owned_by = "openbili-bench"
context_window = 32768
max_output_tokens = 8192

[models.prices]
input_per_mtok = "5.00"
output_per_mtok = "0"
per_image = "0.04"

[[models.routes]]
name = "bench-upstream"
provider = "openai"
base_url = "{upstream}/v1"
upstream_model = "bench-image"
secret_env = "{secret_env}"
priority = 1
"""


def start_openbili(args: argparse.Namespace, upstream: str) -> Target:
    say(f"Openbili: fresh database {BENCH_DB}")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    try:
        import redis

        redis.Redis.from_url(BENCH_REDIS_URL).flushdb()  # db 13 is the benchmark's alone
    except Exception as exc:
        say(f"Redis db 13 not flushed ({type(exc).__name__}: {exc}); continuing")
    env = dict(os.environ)
    for name in ("CELERY_TASK_ALWAYS_EAGER", "CELERY_BROKER_URL", "OPENBILI_DEMO"):
        env.pop(name, None)
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # a throwaway database: a throwaway key
    env.update(
        DATABASE_URL=BENCH_DB_URL,
        REDIS_URL=BENCH_REDIS_URL,
        DJANGO_SETTINGS_MODULE="openbili.settings",
        DEBUG="0",
        PYTHONUNBUFFERED="1",
        # The default backend (FileSystemStorage) in a directory of the bench's own, emptied here
        # like the database: the images scenarios write one file per request.
        OPENBILI_IMAGE_STORAGE_OPTIONS=json.dumps({"location": str(IMAGES_DIR)}),
    )
    for name in ("OPENBILI_IMAGE_STORAGE_BACKEND", "OPENBILI_PUBLIC_BASE_URL"):
        env.pop(name, None)
    shutil.rmtree(IMAGES_DIR, ignore_errors=True)
    env[UPSTREAM_SECRET_ENV] = "sk-bench-upstream"
    say("Openbili: migrate, catalog_load, probe, account_create, key_create")
    manage(env, "migrate", "--noinput", "-v", "0")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="bench-catalog-", delete=False) as fh:
        fh.write(CATALOG.format(upstream=upstream, secret_env=UPSTREAM_SECRET_ENV))
        catalog_path = fh.name
    try:
        manage(env, "catalog_load", catalog_path)
    finally:
        os.unlink(catalog_path)
    probe = manage(env, "probe")
    if f"OK   {CHAT_MODEL} " not in probe:
        raise RuntimeError(f"probe failed:\n{probe}")
    notes = {"probe": probe.strip().splitlines()}
    if f"OK   {CLAUDE_MODEL} " not in probe:
        # Until the gateway has its Anthropic provider the Claude route fails its probe and the model
        # stays invisible: the messages and chat_claude scenarios then report errors, the rest runs.
        say(f"Openbili: the {CLAUDE_MODEL} route failed its probe; its scenarios will show errors")
        notes["claude_probe_failed"] = True
    if f"OK   {IMAGE_MODEL} " not in probe:
        say(f"Openbili: the {IMAGE_MODEL} route failed its probe; the images scenarios will show errors")
        notes["image_probe_failed"] = True
    keys = []
    for i in range(args.accounts):  # --accounts N spreads the load over N accounts (one key each)
        account = "bench" if i == 0 else f"bench-{i + 1}"
        manage(env, "account_create", account, "--credit", "1000000")
        # Rate limits on (far above what the run sends), so every request also pays the Redis checks.
        limits = [] if args.no_rate_limits else ["--rpm", "2000000000", "--tpm", "2000000000"]
        key = manage(env, "key_create", "--account", account, "--name", "bench", "--quiet", *limits).strip()
        if not key.startswith("sk-"):
            raise RuntimeError(f"key_create printed no key: {key!r}")
        keys.append(key)
    key = keys[0]
    soak_keys = []
    if args.soak > 0:  # the soak's own accounts: its rows, holds and charges are told apart by them
        for account, names in SOAK_ACCOUNTS:
            manage(env, "account_create", account, "--credit", SOAK_CREDIT)
            for name in names:
                secret = manage(env, "key_create", "--account", account, "--name", name, "--quiet", *limits).strip()
                if not secret.startswith("sk-"):
                    raise RuntimeError(f"key_create printed no key: {secret!r}")
                soak_keys.append((account, secret))
    if args.synchronous_commit != "on":  # diagnostic only: what WAL flushes at commit cost
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {BENCH_DB} SET synchronous_commit = {args.synchronous_commit}")

    port = free_port()
    argv = [PY, "-m", "uvicorn", "openbili.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(args.workers), "--no-access-log", "--log-level", "warning"]
    argv += ["--http", "openbili.http_protocol:HttpProtocol"]  # as scripts/run serves it
    say(f"Openbili: uvicorn on 127.0.0.1:{port} with {args.workers} worker(s)")
    service = Service("openbili", argv, env=env, log=VAR / "openbili.log")
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        status, body = http("GET", base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return status == 200 and b"bench-model" in body

    wait_port(port, service, 60)
    wait_ready(ready, service, 60, "GET /v1/models listing bench-model")
    return Target("openbili", base, ",".join(keys), service, "openbili", notes=notes, soak_keys=soak_keys)


LITELLM_CONFIG = """\
# Written by bench/run.py: the same models, routed to the same fake upstream; no database.
# claude-sonnet-4-6 serves /v1/messages (pass-through), /v1/chat/completions and /v1/responses
# (translated); bench-model /v1/chat/completions and /v1/responses; bench-image /v1/images/generations.
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
  - model_name: claude-sonnet-4-6
    litellm_params:
      model: anthropic/claude-sonnet-4-6
      api_base: {upstream}
      api_key: sk-bench-upstream
  - model_name: bench-image
    litellm_params:
      model: openai/bench-image
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
    model_info:
      mode: image_generation
general_settings:
  master_key: {master_key}
"""


def litellm_install() -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    say(f"LiteLLM: creating {LITELLM_VENV} and installing {LITELLM_SPEC} (a few minutes; not a project dependency)")
    VAR.mkdir(parents=True, exist_ok=True)
    log = VAR / "litellm-install.log"
    try:
        subprocess.run([PY, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300)
        with open(log, "wb") as fh:
            subprocess.run(
                [str(LITELLM_VENV / "bin" / "pip"), "install", LITELLM_SPEC],
                check=True,
                timeout=1500,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        say(f"LiteLLM install failed ({exc}); continuing without LiteLLM. Last lines of {log}:")
        for line in tail:
            print("    " + line)
        shutil.rmtree(LITELLM_VENV, ignore_errors=True)
        return None
    return exe if exe.exists() else None


def start_litellm(args: argparse.Namespace, upstream: str) -> Target | None:
    exe = litellm_install()
    if exe is None:
        return None
    config = VAR / "litellm-config.yaml"
    master_key = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without one; clients send it
    config.write_text(LITELLM_CONFIG.format(upstream=upstream, master_key=master_key))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_", "LITELLM_"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1", LITELLM_LOG="ERROR")
    env["PATH"] = f"{LITELLM_VENV / 'bin'}:{env.get('PATH', '')}"
    port = free_port()
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(args.workers)]
    say(f"LiteLLM: proxy on 127.0.0.1:{port} with {args.workers} worker(s)")
    service = Service("litellm", argv, env=env, log=VAR / "litellm.log")
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def ready() -> bool:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {master_key}"}
        status, _ = http("POST", base + CHAT_PATH, body=body, headers=headers, timeout=10)
        return status == 200

    try:
        wait_port(port, service, 180)
        wait_ready(ready, service, 120, "POST /v1/chat/completions")
    except RuntimeError as exc:
        say(f"LiteLLM did not start ({exc}); continuing without it. Last lines of {service.log_path}:")
        for line in service.log_since(0, 400)[-15:]:
            print("    " + line)
        service.stop()
        return None
    version = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # Its /v1/messages takes the master key as x-api-key (the Anthropic SDK's way) or as a Bearer.
    notes: dict[str, Any] = {"version": version}
    messages_auth = "x-api-key"
    for auth in ("x-api-key", "bearer"):
        status, raw = http(
            "POST",
            base + MESSAGES_PATH,
            body=body_for(False, CLAUDE_MODEL, "messages"),
            headers=load.headers_for(master_key, "messages", auth),
            timeout=30,
        )
        notes[f"messages_{auth}"] = status
        if status == 200:
            messages_auth = auth
            break
        say(f"LiteLLM: /v1/messages with the key as {auth}: HTTP {status} {raw[:200]!r}")
    status, raw = http(
        "POST",
        base + CHAT_PATH,
        body=body_for(False, CLAUDE_MODEL),
        headers=load.headers_for(master_key),
        timeout=30,
    )
    notes["chat_claude"] = status
    if status != 200:
        say(f"LiteLLM: chat on {CLAUDE_MODEL}: HTTP {status} {raw[:200]!r}")
    for label, path, model, api in (
        ("responses", RESPONSES_PATH, CHAT_MODEL, "responses"),
        ("responses_claude", RESPONSES_PATH, CLAUDE_MODEL, "responses"),
        ("images", IMAGES_PATH, IMAGE_MODEL, "images"),
    ):
        status, raw = http(
            "POST", base + path, body=body_for(False, model, api), headers=load.headers_for(master_key), timeout=30
        )
        notes[label] = status
        if status != 200:
            say(f"LiteLLM: {path} on {model}: HTTP {status} {raw[:200]!r}")
    return Target("litellm", base, master_key, service, "litellm", notes=notes, messages_auth=messages_auth)


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    stream: bool
    concurrency: int
    requests: int
    duration: float
    warmup: int
    api: str = "chat"  # scenario group (GROUPS; see Target.load_args)


# group -> (name prefix, what the client sends). Scenario names are group prefix + load shape;
# results/ files are compared by them, so existing names never change.
GROUPS = {
    "chat": ("", "/v1/chat/completions on bench-model, OpenAI route (pass-through)"),
    "messages": ("messages_", f"/v1/messages on {CLAUDE_MODEL}, Anthropic route (pass-through)"),
    "chat_claude": ("chat_claude_", f"/v1/chat/completions on {CLAUDE_MODEL}, Anthropic route (translated)"),
    "responses": ("responses_", f"/v1/responses on {CHAT_MODEL}, OpenAI route (pass-through)"),
    "responses_claude": ("responses_claude_", f"/v1/responses on {CLAUDE_MODEL}, Anthropic route (translated)"),
    "images": ("images_", f"/v1/images/generations on {IMAGE_MODEL}, OpenAI route (b64_json stored, URL answered)"),
}
STREAM_SHAPES = ("nonstream_c1", "nonstream_c32", "stream_c1", "stream_c8")
# The load shapes of each group (default STREAM_SHAPES). Images do not stream, and a generation is
# slow upstream in reality (seconds), so 8 in flight is already a busy client.
GROUP_SHAPES = {"images": ("nonstream_c1", "nonstream_c8")}


def scenarios(quick: bool) -> list[Scenario]:
    """Every group gets its loads (GROUP_SHAPES, else the four); the chat group keeps its historical
    names (no prefix)."""
    # name -> (title, stream, concurrency, requests, seconds, warm-up requests)
    if quick:
        shapes = {
            "nonstream_c1": ("non-stream, concurrency 1 (added latency)", False, 1, 300, 3, 30),
            "nonstream_c8": ("non-stream, concurrency 8", False, 8, 100_000, 3, 32),
            "nonstream_c32": ("non-stream, concurrency 32 (throughput)", False, 32, 100_000, 3, 64),
            "stream_c1": ("stream, concurrency 1 (TTFB and total)", True, 1, 200, 3, 20),
            "stream_c8": ("stream, concurrency 8 (TTFB and total)", True, 8, 100_000, 3, 32),
        }
    else:
        shapes = {
            "nonstream_c1": ("non-stream, concurrency 1 (added latency)", False, 1, 2000, 20, 200),
            "nonstream_c8": ("non-stream, concurrency 8", False, 8, 1_000_000, 10, 160),
            "nonstream_c32": ("non-stream, concurrency 32 (throughput)", False, 32, 1_000_000, 10, 640),
            "stream_c1": ("stream, concurrency 1 (TTFB and total)", True, 1, 1000, 15, 100),
            "stream_c8": ("stream, concurrency 8 (TTFB and total)", True, 8, 1_000_000, 10, 160),
        }
    out = []
    for group, (prefix, what) in GROUPS.items():
        for name in GROUP_SHAPES.get(group, STREAM_SHAPES):
            title, stream, conc, requests, duration, warmup = shapes[name]
            out.append(Scenario(prefix + name, f"{title}; {what}", stream, conc, requests, duration, warmup, api=group))
    return out


def select(all_: list[Scenario], only: str | None) -> list[Scenario]:
    """--only takes scenario names and/or group names (GROUPS)."""
    if not only:
        return all_
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {s.name for s in all_} - set(GROUPS)
    if unknown:
        raise SystemExit(
            f"--only: unknown scenario(s) {sorted(unknown)}; known: {[s.name for s in all_]} or groups {list(GROUPS)}"
        )
    return [s for s in all_ if s.name in wanted or s.api in wanted]


def image_answer(target: Target) -> str:
    """What one image generation on this target answers (outside any measurement): a stored image's
    URL (then fetched, to show it serves the PNG) or the upstream's b64_json inline."""
    args = target.load_args("images")
    headers = load.headers_for(args["key"].split(",")[0])
    status, raw = http("POST", args["url"], body=body_for(False, IMAGE_MODEL, "images"), headers=headers, timeout=30)
    try:
        item = json.loads(raw)["data"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"HTTP {status}, no data[0]: {raw[:200]!r}"
    size = f"answer {len(raw):,} bytes"
    if isinstance(item.get("url"), str):
        got, image = http("GET", item["url"], timeout=10)
        inline = "; b64_json also inline" if "b64_json" in item else ""
        return (
            f"url (the image stored, its URL answered{inline}; GET of the URL: HTTP {got}, "
            f"{'a PNG' if image.startswith(PNG_MAGIC) else 'not a PNG'} of {len(image):,} bytes); {size}"
        )
    if isinstance(item.get("b64_json"), str):
        return f"b64_json inline (nothing stored, no URL; {len(item['b64_json']):,} base64 characters); {size}"
    return f"HTTP {status}, data[0] keys {sorted(item)}; {size}"


def measure(target: Target, scenario: Scenario, monitor: Monitor, stagger_ms: float = 0.0) -> dict[str, Any]:
    marks: dict[str, Any] = {}
    answer = image_answer(target) if scenario.api == "images" else None
    log_offset = target.service.log_offset()

    def on_start() -> None:
        marks["mark"] = monitor.mark()

    result = drive(
        **target.load_args(scenario.api),
        concurrency=scenario.concurrency,
        requests=scenario.requests,
        duration=scenario.duration,
        stream=scenario.stream,
        warmup=scenario.warmup,
        on_start=on_start,
        stagger_ms=stagger_ms,
    )
    window = monitor.since(marks["mark"])
    completed = max(result["completed"], 1)
    cpu = window["cpu_s"]
    result["cpu_ms_per_request"] = round(cpu.get(target.cpu_group, 0.0) * 1000 / completed, 3)
    result["pg_cpu_ms_per_request"] = round(cpu.get("postgres", 0.0) * 1000 / completed, 3)
    result["upstream_cpu_ms_per_request"] = round(cpu.get("upstream", 0.0) * 1000 / completed, 3)
    result["driver_cpu_ms_per_request"] = round(cpu.get("driver", 0.0) * 1000 / completed, 3)
    result["cpu_seconds"] = {name: round(value, 3) for name, value in cpu.items()}
    result["target_cpu_seconds_by_pid"] = window["cpu_s_by_pid"].get(target.cpu_group, {})
    result["host_busy_pct"] = round(window["host_busy"] * 100, 1)
    result["host_breakdown_pct"] = window["host_breakdown_pct"]
    result["peak_rss_mb"] = round(window["peak_rss"].get(target.cpu_group, 0) / 2**20, 1)
    result["peak_process_rss_mb"] = round(window["peak_proc_rss"].get(target.cpu_group, 0) / 2**20, 1)
    result["log_lines"] = target.service.log_since(log_offset)
    if answer is not None:
        result["answer"] = answer
    if not target.service.alive():
        result["target_exited"] = target.service.proc.returncode
    return result


def added(result: dict, base: dict | None, section: str, q: str) -> float | None:
    if base is None or not result.get(section) or not base.get(section):
        return None
    mine, theirs = result[section].get(q), base[section].get(q)
    if mine is None or theirs is None:
        return None
    return round(mine - theirs, 3)


def fmt(value: Any, width: int, digits: int = 2) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text.rjust(width)


COLUMNS = [
    ("target", 9),
    ("req/s", 8),
    ("p50", 7),
    ("p90", 7),
    ("p99", 7),
    ("+p50", 7),
    ("+p99", 7),
    ("ttfb50", 7),
    ("ttfb99", 7),
    ("+ttfb50", 7),
    ("errors", 6),
    ("cpu/req", 8),
    ("pg/req", 7),
    ("rss MB", 7),
    ("host%", 6),
]


def table(scenario: Scenario, rows: dict[str, dict]) -> str:
    lines = [f"== {scenario.name}: {scenario.title} ==".ljust(40)]
    lines.append(" ".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(COLUMNS)))
    base = rows.get("upstream")
    for target, r in rows.items():
        lat, ttfb = r["latency_ms"], r.get("ttfb_ms") or {}
        is_base = target == "upstream"
        values = [
            target.ljust(9),
            fmt(r["rps"], 8, 1),
            fmt(lat["p50"], 7),
            fmt(lat["p90"], 7),
            fmt(lat["p99"], 7),
            fmt(None if is_base else added(r, base, "latency_ms", "p50"), 7),
            fmt(None if is_base else added(r, base, "latency_ms", "p99"), 7),
            fmt(ttfb.get("p50"), 7),
            fmt(ttfb.get("p99"), 7),
            fmt(None if is_base else added(r, base, "ttfb_ms", "p50"), 7),
            fmt(r["errors"], 6),
            fmt(r["cpu_ms_per_request"], 8, 3),
            fmt(r["pg_cpu_ms_per_request"] if target == "openbili" else None, 7, 3),
            fmt(r["peak_rss_mb"], 7, 1),
            fmt(r["host_busy_pct"], 6, 0),
        ]
        lines.append(" ".join(values))
    lines.append(
        "  latency/TTFB in ms (client side); +x = added vs the upstream alone; cpu/req = CPU ms per request of "
        "the target's process tree; pg/req = all postgres processes; rss = peak RSS of the tree; host% = both "
        "cores busy (driver + upstream + target + PG); floor = bench/floor.py, a bare proxy on the same stack."
    )
    if scenario.api in ("chat_claude", "responses_claude"):
        lines.append(
            f"  {scenario.api}: the upstream alone answers the Messages call the gateway makes; the floor cannot "
            f"translate, it passes the {'chat' if scenario.api == 'chat_claude' else 'Responses'} request through "
            "to the upstream's own path for it."
        )
    if scenario.api in ("messages", "chat_claude") or (scenario.api == "responses_claude" and scenario.stream):
        lines.append(
            "  messages TTFB = first content_block_delta; a stream completes at message_stop"
            + (" (the upstream alone; the others: Responses events)." if scenario.api == "responses_claude" else ".")
        )
    if scenario.api in ("responses", "responses_claude") and scenario.stream:
        lines.append("  responses TTFB = first response.output_text.delta; a stream completes at response.completed.")
    if scenario.api == "images":
        lines.append(
            "  images: the fake upstream answers a tiny PNG as b64_json at once, so this is the cost per image of "
            "what each target does with it; the answer each target gave (the shape of data[0]):"
        )
        lines.extend(f"    {target}: {r['answer']}" for target, r in rows.items() if r.get("answer"))
    for target, r in rows.items():
        if r["errors"]:
            lines.append(f"  {target} errors: {r['errors_by_kind']}")
            for kind, sample in r["error_samples"].items():
                lines.append(f"    {kind}: {sample}")
        if r.get("log_lines"):
            lines.append(f"  {target} log during the scenario ({len(r['log_lines'])} line(s), first ones):")
            lines.extend("    " + line[:300] for line in r["log_lines"][:10])
        by_pid = {pid: cpu for pid, cpu in r.get("target_cpu_seconds_by_pid", {}).items() if cpu >= 0.05}
        if len(by_pid) > 1:  # with --workers N: did every worker get its share of the connections?
            lines.append(f"  {target} CPU seconds by process: " + ", ".join(f"{p} {c:.2f}" for p, c in by_pid.items()))
        if "target_exited" in r:
            lines.append(f"  {target} EXITED with code {r['target_exited']}")
    return "\n".join(lines)


def ratio_or_none(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def ratios(results: dict[str, dict[str, dict]]) -> tuple[str, dict]:
    """Openbili ÷ LiteLLM (what we replace) and Openbili ÷ floor (what billing costs on the same stack).

    Throughput x = Openbili req/s ÷ theirs (> 1: faster); cpu = Openbili CPU ms per request ÷ theirs
    (< 1: cheaper), (+PG) with PostgreSQL's CPU added to Openbili's; +p50/+p99/+ttfb50 = Openbili's
    minus the floor's, ms. A scenario where Openbili had errors is marked: errors are cheap, so
    its figures there are not the cost of a served request.
    """
    lines = ["== Openbili vs LiteLLM and vs the floor (same worker count) =="]
    lines.append(
        "scenario".ljust(31)
        + " | ÷litellm: thr x".rjust(17)
        + "cpu".rjust(7)
        + "(+PG)".rjust(7)
        + " | ÷floor: thr x".rjust(15)
        + "cpu".rjust(7)
        + "(+PG)".rjust(7)
        + "  +p50".rjust(7)
        + "+p99".rjust(7)
        + "+ttfb50".rjust(8)
        + " | ob errors"
    )
    data: dict[str, dict] = {}
    for name, rows in results.items():
        ob = rows.get("openbili")
        if not ob:
            continue
        entry: dict[str, Any] = {"openbili_errors": ob["errors"]}
        ob_cpu = ob["cpu_ms_per_request"]
        ob_cpu_pg = ob_cpu + ob["pg_cpu_ms_per_request"]
        ll, fl = rows.get("litellm"), rows.get("floor")
        if ll:  # flat keys, as in earlier results files
            entry["throughput_x"] = ratio_or_none(ob["rps"], ll["rps"])
            entry["cpu_per_request_ratio"] = ratio_or_none(ob_cpu, ll["cpu_ms_per_request"])
            entry["cpu_with_pg_per_request_ratio"] = ratio_or_none(ob_cpu_pg, ll["cpu_ms_per_request"])
        if fl:
            entry["floor_throughput_x"] = ratio_or_none(ob["rps"], fl["rps"])
            entry["floor_cpu_per_request_ratio"] = ratio_or_none(ob_cpu, fl["cpu_ms_per_request"])
            entry["floor_cpu_with_pg_per_request_ratio"] = ratio_or_none(ob_cpu_pg, fl["cpu_ms_per_request"])
            entry["floor_added_p50_ms"] = added(ob, fl, "latency_ms", "p50")
            entry["floor_added_p99_ms"] = added(ob, fl, "latency_ms", "p99")
            entry["floor_added_ttfb50_ms"] = added(ob, fl, "ttfb_ms", "p50")
        data[name] = entry
        lines.append(
            name.ljust(31)
            + fmt(entry.get("throughput_x"), 17, 2)
            + fmt(entry.get("cpu_per_request_ratio"), 7, 3)
            + fmt(entry.get("cpu_with_pg_per_request_ratio"), 7, 3)
            + fmt(entry.get("floor_throughput_x"), 15, 3)
            + fmt(entry.get("floor_cpu_per_request_ratio"), 7, 2)
            + fmt(entry.get("floor_cpu_with_pg_per_request_ratio"), 7, 2)
            + fmt(entry.get("floor_added_p50_ms"), 7)
            + fmt(entry.get("floor_added_p99_ms"), 7)
            + fmt(entry.get("floor_added_ttfb50_ms"), 8)
            + fmt(ob["errors"], 11)
            + ("  <- Openbili errors: not a served request's cost" if ob["errors"] else "")
        )
    lines.append(
        "  ÷litellm cpu target <= 0.125; ÷floor: what billing (keys, limits, ledger, usage row, validation,"
        " translation) costs over a bare proxy on the same uvicorn + aiohttp stack."
    )
    return "\n".join(lines), data


def targets_check(results: dict[str, dict[str, dict]], ratio_data: dict) -> tuple[str, list[dict]]:
    """The performance issue's targets and this round's bars, each PASS / FAIL / n/a (info: no bar)."""
    checks: list[dict] = []

    def check(
        label: str,
        value: float | None,
        limit: float | None,
        higher_is_better: bool = False,
        extra: str = "",
        errors: int = 0,
    ) -> str:
        if limit is None:
            verdict = "info"
        elif value is None:
            verdict = "n/a"
        elif errors:  # a bar is met by served requests only
            verdict = "FAIL"
        else:
            verdict = "PASS" if (value >= limit if higher_is_better else value <= limit) else "FAIL"
        checks.append({"target": label, "value": value, "limit": limit, "verdict": verdict, "errors": errors})
        shown = "-" if value is None else f"{value:.3f}"
        bar = "" if limit is None else f" ({'>=' if higher_is_better else '<='} {limit})"
        return f"  [{verdict:4}] {label}: {shown}{bar}{extra}"

    def errors_of(scenario: str, target: str = "openbili") -> int:
        return results.get(scenario, {}).get(target, {}).get("errors", 0)

    lines = ["== Targets of the performance issue =="]
    c1 = results.get("nonstream_c1", {})
    if "openbili" in c1:
        lines.append(
            check("added p50 latency at c=1, ms", added(c1["openbili"], c1.get("upstream"), "latency_ms", "p50"), 2)
        )
        lines.append(
            check("added p99 latency at c=1, ms", added(c1["openbili"], c1.get("upstream"), "latency_ms", "p99"), 4)
        )
    s1 = results.get("stream_c1", {})
    if "openbili" in s1:
        lines.append(
            check(
                "added TTFB p50 at c=1 (stream), ms", added(s1["openbili"], s1.get("upstream"), "ttfb_ms", "p50"), 1.5
            )
        )
    for name in ("nonstream_c1", "nonstream_c32"):
        if "cpu_per_request_ratio" in ratio_data.get(name, {}):
            lines.append(check(f"CPU/request vs LiteLLM ({name})", ratio_data[name]["cpu_per_request_ratio"], 0.125))
    c32 = results.get("nonstream_c32", {})
    if "throughput_x" in ratio_data.get("nonstream_c32", {}):
        errors = c32["openbili"]["errors"]
        lines.append(
            check(
                "throughput at c=32 vs LiteLLM, x",
                ratio_data["nonstream_c32"]["throughput_x"],
                8,
                higher_is_better=True,
                extra=f"; Openbili errors: {errors}",
            )
        )
    elif "openbili" in c32:
        lines.append(
            f"  [n/a ] throughput at c=32 vs LiteLLM (run with --litellm); Openbili errors: {c32['openbili']['errors']}"
        )

    lines.append("== This round: Anthropic Messages, translation, the floor ==")
    for scenario, label, bar in (
        ("nonstream_c32", "chat pass-through throughput at c=32 vs LiteLLM, x", 12),
        ("messages_nonstream_c32", "/v1/messages pass-through throughput at c=32 vs LiteLLM, x", 10),
    ):
        if scenario not in results or "openbili" not in results[scenario]:
            continue
        errors = errors_of(scenario)
        value = ratio_data.get(scenario, {}).get("throughput_x")
        extra = f"; Openbili errors: {errors}" + ("" if "litellm" in results[scenario] else " (run with --litellm)")
        lines.append(check(label, value, bar, higher_is_better=True, extra=extra, errors=errors))
    for shape in ("nonstream_c1", "nonstream_c32", "stream_c1", "stream_c8"):
        passthrough = results.get(shape, {}).get("openbili")
        translated = results.get("chat_claude_" + shape, {}).get("openbili")
        if not passthrough or not translated:
            continue
        errors = translated["errors"] + passthrough["errors"]
        lines.append(
            check(
                f"translated vs pass-through gateway CPU/request ({shape}), x",
                ratio_or_none(translated["cpu_ms_per_request"], passthrough["cpu_ms_per_request"]),
                1.5,
                extra=f"; {translated['cpu_ms_per_request']:.3f} vs {passthrough['cpu_ms_per_request']:.3f} ms"
                f"; Openbili errors: {errors}",
                errors=errors,
            )
        )
    for shape in STREAM_SHAPES:  # the same comparison for the Responses API; no bar of its own (info)
        passthrough = results.get("responses_" + shape, {}).get("openbili")
        translated = results.get("responses_claude_" + shape, {}).get("openbili")
        if not passthrough or not translated:
            continue
        errors = translated["errors"] + passthrough["errors"]
        lines.append(
            check(
                f"Responses translated vs pass-through gateway CPU/request ({shape}), x",
                ratio_or_none(translated["cpu_ms_per_request"], passthrough["cpu_ms_per_request"]),
                None,
                extra=f"; {translated['cpu_ms_per_request']:.3f} vs {passthrough['cpu_ms_per_request']:.3f} ms"
                f"; Openbili errors: {errors}",
                errors=errors,
            )
        )
    for group, (prefix, _) in GROUPS.items():
        one, many = ratio_data.get(prefix + "nonstream_c1", {}), ratio_data.get(prefix + "nonstream_c32", {})
        if "floor_added_p50_ms" in one:
            errors = errors_of(prefix + "nonstream_c1")
            lines.append(
                check(
                    f"Openbili - floor added latency at c=1 ({group}), p50 ms",
                    one["floor_added_p50_ms"],
                    None,
                    extra=f"; p99 {fmt(one['floor_added_p99_ms'], 0, 3)} ms; Openbili errors: {errors}",
                    errors=errors,
                )
            )
        if "floor_throughput_x" in many:
            errors = errors_of(prefix + "nonstream_c32")
            lines.append(
                check(
                    f"Openbili ÷ floor throughput at c=32 ({group}), x",
                    many["floor_throughput_x"],
                    None,
                    extra=f"; CPU/request x {fmt(many['floor_cpu_per_request_ratio'], 0, 2)}"
                    f" (+PG {fmt(many['floor_cpu_with_pg_per_request_ratio'], 0, 2)}); Openbili errors: {errors}",
                    errors=errors,
                )
            )
    return "\n".join(lines), checks


# --------------------------------------------------------------------------------------------------
# Soak and profile
# --------------------------------------------------------------------------------------------------


# The soak's own accounts (account, its keys): their rows, holds and ledger entries are the soak's.
SOAK_ACCOUNTS = (("soak-1", ("soak-1a", "soak-1b")), ("soak-2", ("soak-2a",)), ("soak-3", ("soak-3a",)))
SOAK_CREDIT = "1000000"
SOAK_CONCURRENCY = 8
SOAK_FAULT_RATE = 0.05  # share of upstream calls answered with a fault (bench/upstream.py FAULTS)
SOAK_FAULT_SEED = 1
SOAK_ROUTE_TIMEOUT = 3  # s: the routes' read timeout during the soak, so a hung upstream times out
SOAK_RSS_LIMIT_PCT = 10.0
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# Every /v1 entry point, in fixed proportions (weight = requests per 100). A row is told apart by
# (endpoint, model_requested, stream).
SOAK_MIX: list[dict[str, Any]] = [
    {"name": name, "method": "GET" if kind == "models" else "POST", "path": path, "kind": kind, "model": model}
    | {"stream": stream, "weight": weight}
    for name, path, kind, model, stream, weight in (
        ("chat", CHAT_PATH, "chat", CHAT_MODEL, False, 20),  # OpenAI route, pass-through
        ("chat_stream", CHAT_PATH, "chat", CHAT_MODEL, True, 15),
        ("chat_claude", CHAT_PATH, "chat", CLAUDE_MODEL, False, 8),  # Anthropic route, translated
        ("chat_claude_stream", CHAT_PATH, "chat", CLAUDE_MODEL, True, 4),
        ("messages", MESSAGES_PATH, "messages", CLAUDE_MODEL, False, 12),  # Anthropic route, pass-through
        ("messages_stream", MESSAGES_PATH, "messages", CLAUDE_MODEL, True, 8),
        ("count_tokens", COUNT_TOKENS_PATH, "count_tokens", CLAUDE_MODEL, False, 8),
        ("responses", RESPONSES_PATH, "responses", CHAT_MODEL, False, 6),  # OpenAI route, pass-through
        ("responses_stream", RESPONSES_PATH, "responses", CHAT_MODEL, True, 5),
        ("responses_claude", RESPONSES_PATH, "responses", CLAUDE_MODEL, False, 3),  # Anthropic route, translated
        ("responses_claude_stream", RESPONSES_PATH, "responses", CLAUDE_MODEL, True, 2),
        ("images", IMAGES_PATH, "images", IMAGE_MODEL, False, 4),  # OpenAI image route, b64_json stored
        ("models", "/v1/models", "models", "", False, 5),
    )
]


def soak(target: Target, seconds: float, monitor: Monitor, upstream_url: str) -> tuple[str, dict]:
    """Every /v1 entry point mixed (SOAK_MIX) at c=8 on the soak's accounts, with SOAK_FAULT_RATE of
    the upstream calls faulted; then rows, pending, holds, ledger and RSS, each with its verdict."""
    warmup = min(30.0, max(seconds / 10, 3.0))
    say(
        f"soak: every /v1 entry point mixed, c={SOAK_CONCURRENCY}, {seconds:.0f} s (+{warmup:.0f} s warm-up), "
        f"{SOAK_FAULT_RATE:.0%} upstream faults, {len(target.soak_keys)} keys on {len(SOAK_ACCOUNTS)} accounts"
    )
    if not target.soak_keys:
        raise RuntimeError("the soak's accounts were not created (start_openbili runs with args.soak)")
    with psycopg.connect(BENCH_DB_URL, autocommit=True) as conn:
        timeouts = conn.execute("SELECT id, timeout_seconds FROM billing_route ORDER BY id").fetchall()
        conn.execute("UPDATE billing_route SET timeout_seconds = %s", (SOAK_ROUTE_TIMEOUT,))  # NOTIFY: reloaded
    time.sleep(1.0)
    faults_url = upstream_url + "/__bench__/faults"
    http("POST", faults_url, body=json.dumps({"rate": SOAK_FAULT_RATE, "seed": SOAK_FAULT_SEED}).encode())
    log_offset = target.service.log_offset()
    rss_start: dict[int, int] = {}
    timeline: list[dict] = []
    stop = threading.Event()

    def on_start() -> None:
        rss_start.update(monitor.rss_by_pid(target.cpu_group))

    def sampler() -> None:
        began = time.monotonic()
        while not stop.wait(min(60.0, max(seconds / 10, 1.0))):
            rss = monitor.rss_by_pid(target.cpu_group)
            timeline.append(
                {"t": round(time.monotonic() - began, 1), "rss_mb": {p: round(v / 2**20, 1) for p, v in rss.items()}}
            )

    thread = threading.Thread(target=sampler, daemon=True)
    mark = monitor.mark()
    thread.start()
    try:
        result = drive(
            base_url=target.base_url,
            keys=[key for _, key in target.soak_keys],
            mix=SOAK_MIX,
            concurrency=SOAK_CONCURRENCY,
            duration=seconds,
            warmup_seconds=warmup,
            timeout=60.0,
            seed=SOAK_FAULT_SEED,
            on_start=on_start,
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        _, raw = http("GET", faults_url)
        http("POST", faults_url, body=json.dumps({"rate": 0}).encode())
        with psycopg.connect(BENCH_DB_URL, autocommit=True) as conn:
            for route_id, timeout in timeouts:
                conn.execute("UPDATE billing_route SET timeout_seconds = %s WHERE id = %s", (timeout, route_id))
    rss_end = monitor.rss_by_pid(target.cpu_group)
    window = monitor.since(mark)
    faults = json.loads(raw)
    ledger_data = soak_ledger(target, result)
    data = {
        "config": {
            "mix": SOAK_MIX,
            "concurrency": SOAK_CONCURRENCY,
            "fault_rate": SOAK_FAULT_RATE,
            "route_timeout_s": SOAK_ROUTE_TIMEOUT,
            "accounts": [{"account": account, "keys": list(keys)} for account, keys in SOAK_ACCOUNTS],
        },
        "load": result,
        "upstream_faults": faults,
        "ledger": ledger_data,
        "rss": [],
        "timeline": timeline,
        "cpu_s": window["cpu_s"],
    }
    data |= soak_log(target.service.log_since(log_offset, 1_000_000))
    text = soak_report(target, result, faults, ledger_data, rss_start, rss_end, timeline, data)
    return text, data


LOG_LEVEL = re.compile(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def soak_log(lines: list[str]) -> dict[str, Any]:
    """The gateway's log during the soak: lines by level; the first warnings and errors (else the
    first lines), since INFO lines are expected there (count_tokens estimated after a fault)."""
    levels: dict[str, int] = {}
    notable = []
    for line in lines:
        match = LOG_LEVEL.search(line)
        level = match.group(1) if match else "other"
        levels[level] = levels.get(level, 0) + 1
        if level not in ("DEBUG", "INFO") and len(notable) < 200:
            notable.append(line)
    shown = "warnings, errors and other lines" if notable else "lines"
    return {"log_line_count": len(lines), "log_levels": levels, "log_lines": notable or lines[:200], "shown": shown}


def soak_ledger(target: Target, load_result: dict) -> dict[str, Any]:
    """What the soak left in the bench database: its accounts' rows (by mix item, result, account),
    pending rows, open holds, and the ledger (every account; the soak's charges against its rows).
    Pending rows right after the load are waited for (at most 30 s) before the verdict."""
    accounts = [account for account, _ in SOAK_ACCOUNTS]
    with psycopg.connect(BENCH_DB_URL, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT name, id FROM billing_account WHERE name = ANY(%s)", (accounts,)).fetchall())
        account_ids = list(ids.values())
        pending_query = (
            "SELECT count(*) FILTER (WHERE account_id = ANY(%s)), count(*) FROM usage_usagerecord"
            " WHERE billing_result = 'pending'"
        )
        pending_first = conn.execute(pending_query, (account_ids,)).fetchone()
        waited = 0
        pending = pending_first
        while pending[1] and waited < 30:
            time.sleep(1)
            waited += 1
            pending = conn.execute(pending_query, (account_ids,)).fetchone()
        groups = conn.execute(
            """SELECT endpoint, model_requested, stream, billing_result, status, count(*)
                 FROM usage_usagerecord WHERE account_id = ANY(%s) GROUP BY 1, 2, 3, 4, 5""",
            (account_ids,),
        ).fetchall()
        rows_by_account = dict(
            conn.execute(
                "SELECT account_id, count(*) FROM usage_usagerecord WHERE account_id = ANY(%s) GROUP BY 1",
                (account_ids,),
            ).fetchall()
        )
        holds_open = conn.execute(
            "SELECT count(*) FILTER (WHERE account_id = ANY(%s)), count(*) FROM billing_hold WHERE state = 'open'",
            (account_ids,),
        ).fetchone()
        per_account = conn.execute(
            """SELECT a.name, a.balance, COALESCE(l.total, 0), a.reserved, COALESCE(h.total, 0)
                 FROM billing_account a
                 LEFT JOIN (SELECT account_id, sum(amount) AS total FROM billing_ledgerentry GROUP BY 1) l
                        ON l.account_id = a.id
                 LEFT JOIN (SELECT account_id, sum(amount) AS total FROM billing_hold WHERE state = 'open'
                             GROUP BY 1) h ON h.account_id = a.id
                ORDER BY a.id"""
        ).fetchall()
        usage_cost, uncharged = conn.execute(
            "SELECT COALESCE(sum(cost_usd), 0), COALESCE(sum(uncharged_usd), 0) FROM usage_usagerecord"
            " WHERE account_id = ANY(%s)",
            (account_ids,),
        ).fetchone()
        charges, charge_count = conn.execute(
            "SELECT COALESCE(-sum(amount), 0), count(*) FROM billing_ledgerentry"
            " WHERE kind = 'usage' AND account_id = ANY(%s)",
            (account_ids,),
        ).fetchone()
        settled = conn.execute(
            "SELECT COALESCE(sum(settled_amount), 0) FROM billing_hold WHERE account_id = ANY(%s)", (account_ids,)
        ).fetchone()[0]
        row_mismatch = conn.execute(
            """SELECT count(*) FROM usage_usagerecord u
                 LEFT JOIN billing_ledgerentry e ON e.request_id = u.request_id AND e.kind = 'usage'
                WHERE u.account_id = ANY(%s) AND u.cost_usd <> COALESCE(-e.amount, 0)""",
            (account_ids,),
        ).fetchone()[0]
        orphan_charges = conn.execute(
            """SELECT count(*) FROM billing_ledgerentry e
                WHERE e.kind = 'usage' AND e.account_id = ANY(%s)
                  AND NOT EXISTS (SELECT 1 FROM usage_usagerecord u WHERE u.request_id = e.request_id)""",
            (account_ids,),
        ).fetchone()[0]
    item_of = {(i["path"], i["model"], i["stream"]): i["name"] for i in SOAK_MIX}
    rows_by_item: dict[str, int] = {}
    results_by_item: dict[str, dict[str, int]] = {}
    for endpoint, model, stream, billing_result, status, count in groups:
        name = item_of.get((endpoint, model, stream), f"other {endpoint} {model!r} stream={stream}")
        rows_by_item[name] = rows_by_item.get(name, 0) + count
        label = f"{billing_result}/{status}"
        results_by_item.setdefault(name, {})
        results_by_item[name][label] = results_by_item[name].get(label, 0) + count
    sent_by_account: dict[str, int] = {}
    for (account, _), sent in zip(target.soak_keys, load_result["sent_by_key"], strict=True):
        sent_by_account[account] = sent_by_account.get(account, 0) + sent
    unbalanced = [
        {"account": name, "balance": f"{balance:f}", "ledger_sum": f"{total:f}"}
        for name, balance, total, _, _ in per_account
        if balance != total
    ]
    misreserved = [
        {"account": name, "reserved": f"{reserved:f}", "open_holds": f"{held:f}"}
        for name, _, _, reserved, held in per_account
        if reserved != held
    ]
    return {
        "rows": sum(rows_by_item.values()),
        "rows_by_item": rows_by_item,
        "results_by_item": results_by_item,
        "rows_by_account": {name: rows_by_account.get(ids.get(name), 0) for name in accounts},
        "sent_by_account": sent_by_account,
        "pending_after_load": {"soak": pending_first[0], "all": pending_first[1]},
        "pending": {"soak": pending[0], "all": pending[1], "waited_s": waited},
        "open_holds": {"soak": holds_open[0], "all": holds_open[1]},
        "accounts_checked": len(per_account),
        "balances": {name: f"{balance:f}" for name, balance, _, _, _ in per_account if name in ids},
        "unbalanced_accounts": unbalanced,
        "misreserved_accounts": misreserved,
        "usage_cost": f"{usage_cost:f}",
        "charges": f"{charges:f}",
        "charge_count": charge_count,
        "holds_settled": f"{settled:f}",
        "uncharged": f"{uncharged:f}",
        "cost_equals_charges": usage_cost == charges == settled,
        "rows_cost_not_charge": row_mismatch,
        "charges_without_row": orphan_charges,
    }


def soak_report(
    target: Target,
    result: dict,
    faults: dict,
    ledger_data: dict,
    rss_start: dict[int, int],
    rss_end: dict[int, int],
    timeline: list[dict],
    data: dict,
) -> str:
    items = result["items"]
    rows_by_item = ledger_data["rows_by_item"]
    total_weight = sum(item["weight"] for item in SOAK_MIX)
    warm_sent = sum(items[i["name"]]["warmup"]["sent"] for i in SOAK_MIX)
    lines = [
        f"== soak: {target.name}, every /v1 entry point mixed, c={result['concurrency']}, {result['seconds']:.0f} s "
        f"(+{result['warmup_seconds']:.0f} s warm-up), {SOAK_FAULT_RATE:.0%} upstream faults, "
        f"{len(target.soak_keys)} keys on {len(SOAK_ACCOUNTS)} accounts =="
    ]
    lines.append(
        f"  requests sent: {result['sent']:,} (warm-up {warm_sent:,} + measured {result['measured_sent']:,}), "
        f"{result['rps']} req/s measured"
    )
    lines.append(
        "  endpoint                  share      sent      rows    p50 ms    p99 ms  p99 ok ms    max ms  (latency:"
        " measured phase, every answered request; 'ok': the 2xx complete ones)"
    )
    outcomes_total: dict[str, int] = {}
    for item in SOAK_MIX:
        name = item["name"]
        warm, measured = items[name]["warmup"], items[name]["measured"]
        sent = warm["sent"] + measured["sent"]
        lat, ok_lat = measured["latency_ms"], measured["ok_latency_ms"]
        lines.append(
            f"  {name:<24} {item['weight'] / total_weight:6.0%} {sent:>9,} {rows_by_item.get(name, 0):>9,} "
            f"{fmt(lat['p50'], 9)} {fmt(lat['p99'], 9)} {fmt(ok_lat['p99'], 10)} {fmt(lat['max'], 9)}"
        )
        for outcome in set(warm["outcomes"]) | set(measured["outcomes"]):
            count = warm["outcomes"].get(outcome, 0) + measured["outcomes"].get(outcome, 0)
            outcomes_total[outcome] = outcomes_total.get(outcome, 0) + count
    others = {k: v for k, v in ledger_data["rows_by_item"].items() if k not in items}
    for name, count in others.items():
        lines.append(f"  {name}: {count} rows (no such request sent)")
    lines.append(f"  {'total':<31} {result['sent']:>9,} {ledger_data['rows']:>9,}")
    lines.append("  requests by outcome (client side, warm-up included), per endpoint:")
    for item in SOAK_MIX:
        name = item["name"]
        merged: dict[str, int] = {}
        for phase in ("warmup", "measured"):
            for outcome, count in items[name][phase]["outcomes"].items():
                merged[outcome] = merged.get(outcome, 0) + count
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(merged.items(), key=lambda kv: -kv[1]))
        lines.append(f"    {name:<24} {shown}")
    shown = ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes_total.items(), key=lambda kv: -kv[1]))
    lines.append(f"    {'all':<24} {shown}")
    calls = max(faults.get("calls", 0), 1)
    injected = sum(faults.get("faults", {}).values())
    lines.append(
        f"  upstream: {faults.get('calls', 0):,} calls (retries included), {injected:,} faults injected "
        f"({100 * injected / calls:.2f}%): " + ", ".join(f"{k} {v:,}" for k, v in faults.get("faults", {}).items())
    )
    lines.append("  usage rows by result/status, per endpoint:")
    by_result = ledger_data["results_by_item"]
    for name in [i["name"] for i in SOAK_MIX if i["name"] in by_result] + [n for n in by_result if n not in items]:
        results = by_result[name]
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(results.items(), key=lambda kv: -kv[1]))
        lines.append(f"    {name:<24} {shown}")
    sent_by_account = ledger_data["sent_by_account"]
    lines.append(
        "  rows by account: "
        + ", ".join(
            f"{account} {rows:,} rows / {sent_by_account[account]:,} sent"
            for account, rows in ledger_data["rows_by_account"].items()
        )
    )
    pending, first, holds = ledger_data["pending"], ledger_data["pending_after_load"], ledger_data["open_holds"]
    lines.append(
        f"  rows pending: {pending['soak']} (every account: {pending['all']}; right after the load: {first['all']}"
        + (f", waited {pending['waited_s']} s" if pending["waited_s"] else "")
        + f"); open holds: {holds['soak']} (every account: {holds['all']})"
    )
    lines.append(
        f"  ledger: {ledger_data['accounts_checked']} accounts, balance = sum of ledger entries for all but "
        f"{len(ledger_data['unbalanced_accounts'])}, reserved = open holds for all but "
        f"{len(ledger_data['misreserved_accounts'])}"
        + "".join(f"\n    UNBALANCED {u}" for u in ledger_data["unbalanced_accounts"])
        + "".join(f"\n    MISRESERVED {u}" for u in ledger_data["misreserved_accounts"])
    )
    lines.append(
        f"  soak accounts: usage cost of the rows ${ledger_data['usage_cost']} = usage charges "
        f"${ledger_data['charges']} ({ledger_data['charge_count']:,} ledger entries) = holds settled "
        f"${ledger_data['holds_settled']}; rows whose cost is not their charge: {ledger_data['rows_cost_not_charge']}; "
        f"charges without a row: {ledger_data['charges_without_row']}; uncharged (cost above the hold): "
        f"${ledger_data['uncharged']}"
    )
    lines.append("  balances: " + ", ".join(f"{name} ${balance}" for name, balance in ledger_data["balances"].items()))
    lines.append("  pid       process                   RSS start MB  RSS end MB  growth    min-max over time MB")
    growths = []
    for pid in sorted(set(rss_start) | set(rss_end)):
        cmd = process_label(pid, target.service.pid)
        start, end = rss_start.get(pid), rss_end.get(pid)
        growth = 100 * (end - start) / start if start and end is not None else None
        if growth is not None:
            growths.append(growth)
        seen = [p["rss_mb"][pid] for p in timeline if pid in p["rss_mb"]]
        data["rss"].append(
            {
                "pid": pid,
                "cmd": cmd,
                "rss_start_mb": start and round(start / 2**20, 1),
                "rss_end_mb": end and round(end / 2**20, 1),
                "growth_pct": growth and round(growth, 2),
            }
        )
        lines.append(
            f"  {pid:<9} {cmd:<26} {fmt(start and start / 2**20, 12, 1)} {fmt(end and end / 2**20, 11, 1)} "
            f"{fmt(growth, 6, 1)}%    {fmt(min(seen, default=None), 6, 1)}-{fmt(max(seen, default=None), 0, 1)}"
        )
    if timeline:
        pids = sorted(rss_end)
        lines.append("  RSS over time, MB (" + ", ".join(str(pid) for pid in pids) + "):")
        for point in timeline:
            lines.append(
                f"    t={point['t']:>6.0f}s  " + "  ".join(fmt(point["rss_mb"].get(pid), 7, 1) for pid in pids)
            )
    levels = ", ".join(f"{level} {count:,}" for level, count in data["log_levels"].items())
    first = f"; the first {data['shown']}:" if data["log_lines"] else ""
    lines.append(f"  gateway log during the soak: {data['log_line_count']:,} line(s) ({levels or 'none'}){first}")
    lines.extend("    " + line[:300] for line in data["log_lines"][:10])

    lost = [
        f"{item['name']} {ledger_data['rows_by_item'].get(item['name'], 0)}/"
        f"{items[item['name']]['warmup']['sent'] + items[item['name']]['measured']['sent']}"
        for item in SOAK_MIX
        if ledger_data["rows_by_item"].get(item["name"], 0)
        != items[item["name"]]["warmup"]["sent"] + items[item["name"]]["measured"]["sent"]
    ]
    lost += [
        f"{account} {rows}/{ledger_data['sent_by_account'][account]}"
        for account, rows in ledger_data["rows_by_account"].items()
        if rows != ledger_data["sent_by_account"][account]
    ]
    if others:
        lost.append(f"{sum(others.values())} rows of no request sent")
    reconciled = (
        not ledger_data["unbalanced_accounts"]
        and not ledger_data["misreserved_accounts"]
        and ledger_data["cost_equals_charges"]
        and ledger_data["rows_cost_not_charge"] == 0
        and ledger_data["charges_without_row"] == 0
    )
    worst = max(growths, default=None)
    checks = [
        (
            "zero lost rows",
            not lost and ledger_data["rows"] == result["sent"],
            f"{ledger_data['rows']:,} usage rows = {result['sent']:,} requests sent (by endpoint and by account)"
            + (f"; differs: {', '.join(lost)}" if lost else ""),
        ),
        ("zero pending", pending["all"] == 0, f"{pending['all']} pending rows"),
        ("no open holds", holds["all"] == 0, f"{holds['all']} open holds"),
        (
            "ledger reconciled",
            reconciled,
            "every balance = its ledger sum, every reserve = its open holds, soak usage cost = charges = holds settled",
        ),
        (
            f"RSS flat within {SOAK_RSS_LIMIT_PCT:.0f}%",
            worst is not None and worst <= SOAK_RSS_LIMIT_PCT,
            "largest growth " + ("-" if worst is None else f"{worst:+.1f}%"),
        ),
    ]
    data["checks"] = [{"check": name, "pass": ok, "detail": detail} for name, ok, detail in checks]
    lines.extend(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}" for name, ok, detail in checks)
    return "\n".join(lines)


class PgWaits:
    """Samples what the gateway's PostgreSQL backends are doing (pg_stat_activity), 10 times a second.

    Used only during the profile run (it costs PostgreSQL a little CPU of its own).
    """

    QUERY = """
        SELECT state, COALESCE(wait_event_type || ':' || wait_event, 'on CPU') FROM pg_stat_activity
         WHERE datname = %s AND application_name = 'openbili-gateway' AND pid <> pg_backend_pid()
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.error = ""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=self.seconds + 10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    rows = conn.execute(self.QUERY, (BENCH_DB,)).fetchall()
                    self.samples += 1
                    for state, wait in rows:
                        label = f"{state or '?'} / {wait}"
                        self.counts[label] = self.counts.get(label, 0) + 1
                    time.sleep(0.1)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def report(self) -> tuple[list[str], dict]:
        if not self.samples:
            return [f"  pg_stat_activity: no samples {self.error}"], {"error": self.error}
        lines = [f"  gateway PostgreSQL backends by state / wait event (mean count over {self.samples} samples):"]
        for label, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {count / self.samples:6.2f}  {label}")
        return lines, {"samples": self.samples, "mean_backends": {k: v / self.samples for k, v in self.counts.items()}}


def process_label(pid: int, root: int) -> str:
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "(gone)"
    if pid == root:
        return "main process"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "multiprocessing" in cmdline:
        return "worker"
    return cmdline[-26:]


def find_py_spy() -> str | None:
    for candidate in (LITELLM_VENV / "bin" / "py-spy", BASE / ".venv" / "bin" / "py-spy"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("py-spy")


def profile(target: Target, scenario: Scenario, py_spy: str) -> tuple[str, dict]:
    """py-spy record (raw collapsed stacks) of the target's tree during one extra run of scenario."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{target.name}-{scenario.name}.txt"
    seconds = max(int(scenario.duration), 3)
    say(f"profile: py-spy record of {target.name} during {scenario.name} ({seconds} s) -> {out}")
    argv = [py_spy, "record", "--pid", str(target.service.pid), "--subprocesses", "--nonblocking"]
    argv += ["--rate", "200", "--duration", str(seconds), "--format", "raw", "--output", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    waits = PgWaits(seconds) if target.name == "openbili" else None
    try:
        time.sleep(1.0)
        if waits is not None:
            waits.start()
        result = drive(
            **target.load_args(scenario.api),
            concurrency=scenario.concurrency,
            requests=scenario.requests,
            duration=seconds,
            stream=scenario.stream,
            warmup=0,
        )
        spy_out, _ = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            os.killpg(spy.pid, signal.SIGKILL)
            spy.wait(timeout=5)
        if waits is not None:
            waits.join()
    wait_lines, wait_data = waits.report() if waits is not None else ([], {})
    if spy.returncode != 0 or not out.exists():
        message = (spy_out or b"").decode(errors="replace")[-800:]
        return "\n".join([f"py-spy failed ({spy.returncode}): {message}", *wait_lines]), {
            "error": message,
            "pg_waits": wait_data,
        }
    text, data = summarize_profile(out, target.name, scenario.name, result)
    data["pg_waits"] = wait_data
    return "\n".join([text, *wait_lines]), data


def summarize_profile(path: Path, target: str, scenario: str, load: dict) -> tuple[str, dict]:
    self_samples: dict[str, int] = {}
    incl_samples: dict[str, int] = {}
    by_file: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_samples[leaf] = self_samples.get(leaf, 0) + count
        area = area_of(leaf)
        by_file[area] = by_file.get(area, 0) + count
        for frame in set(frames):
            incl_samples[frame] = incl_samples.get(frame, 0) + count
    if total == 0:
        return "profile: no samples", {"samples": 0}

    def top(table_: dict[str, int], n: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in sorted(table_.items(), key=lambda kv: -kv[1])[:n]]

    lines = [f"== profile: {target} during {scenario} ({total} samples, {load['rps']} req/s while profiled) =="]
    lines.append("  self time by area:")
    lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in top(by_file, 15))
    lines.append("  self time, top functions:")
    lines.extend(f"    {pct:5.1f}%  {name[:140]}" for name, pct in top(self_samples, 25))
    lines.append("  inclusive time, top functions:")
    lines.extend(f"    {pct:5.1f}%  {name[:140]}" for name, pct in top(incl_samples, 30))
    data = {
        "path": str(path.relative_to(BASE)),
        "samples": total,
        "self_by_area": top(by_file, 30),
        "self_top": top(self_samples, 40),
        "inclusive_top": top(incl_samples, 60),
    }
    return "\n".join(lines), data


def area_of(frame: str) -> str:
    """'func (path/to/file.py:12)' -> a coarse area: the package or project module."""
    if "(" not in frame:
        return frame
    location = frame.rsplit("(", 1)[1].rstrip(")")
    file = location.rsplit(":", 1)[0]
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if str(BASE) in file:
        return file.split(str(BASE) + "/", 1)[1]
    if "/lib/python" in file:
        return "stdlib:" + file.split("/lib/python", 1)[1].split("/", 1)[1]
    return file


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pg_version = ""
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def billing_check() -> dict[str, Any]:
    """What the benchmark left in the ledger: usage rows by outcome, open holds (should be 0)."""
    with psycopg.connect(BENCH_DB_URL) as conn:
        rows = conn.execute(
            "SELECT billing_result, status, count(*) FROM usage_usagerecord GROUP BY 1, 2 ORDER BY 3 DESC"
        ).fetchall()
        holds = conn.execute("SELECT state, count(*) FROM billing_hold GROUP BY 1 ORDER BY 1").fetchall()
        entries = conn.execute("SELECT kind, count(*) FROM billing_ledgerentry GROUP BY 1 ORDER BY 1").fetchall()
        images = conn.execute("SELECT count(*) FROM usage_storedimage").fetchone()[0]
        image_rows = conn.execute(
            "SELECT count(*) FROM usage_usagerecord WHERE endpoint = %s AND status = 200", (IMAGES_PATH,)
        ).fetchone()[0]
    files = sum(1 for path in IMAGES_DIR.rglob("*") if path.is_file()) if IMAGES_DIR.exists() else 0
    return {
        "usage_rows": [{"billing_result": r[0], "status": r[1], "count": r[2]} for r in rows],
        "holds": dict(holds),
        "ledger_entries": dict(entries),
        "stored_images": {"rows": images, "files": files, "image_requests_ok": image_rows},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short scenarios (smoke run, under a minute)")
    parser.add_argument("--litellm", action="store_true", help="also measure a LiteLLM proxy (own venv)")
    parser.add_argument(
        "--soak",
        type=float,
        default=0,
        metavar="SECONDS",
        help="then soak Openbili: every /v1 entry point mixed, c=8, 5%% upstream faults; rows, ledger and RSS checked",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes of Openbili and LiteLLM")
    parser.add_argument("--profile", action="store_true", help="then py-spy the targets during non-stream c=32")
    parser.add_argument("--upstream-latency-ms", type=float, default=0, help="fake upstream first-byte delay")
    parser.add_argument("--chunks", type=int, default=8, help="fake upstream content pieces per reply")
    parser.add_argument("--accounts", type=int, default=1, help="Openbili accounts (one key each) to spread load on")
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="diagnostic: bench key without RPM/TPM limits (skips the Redis checks on every request)",
    )
    parser.add_argument(
        "--synchronous-commit",
        default="on",
        choices=["on", "off", "local", "remote_write", "remote_apply"],
        help="diagnostic: synchronous_commit of the bench database (default: the server's, on)",
    )
    parser.add_argument(
        "--stagger-ms",
        type=float,
        default=10.0,
        help="open the driver's connections this many ms apart during warm-up (spreads them over workers)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated scenario names and/or groups ({', '.join(GROUPS)}); default: all"
    )
    parser.add_argument("--output", default=str(RESULTS / "latest.json"), help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    VAR.mkdir(parents=True, exist_ok=True)
    monitor = Monitor()
    started = time.monotonic()
    output: dict[str, Any] = {
        "machine": machine_info(),
        "config": {
            "workers": args.workers,
            "quick": args.quick,
            "upstream_latency_ms": args.upstream_latency_ms,
            "chunks": args.chunks,
            "accounts": args.accounts,
            "stagger_ms": args.stagger_ms,
            "synchronous_commit": args.synchronous_commit,
            "payload": json.loads(body_for(False)),
            "messages_payload": json.loads(body_for(False, CLAUDE_MODEL, "messages")),
            "responses_payload": json.loads(body_for(False, CHAT_MODEL, "responses")),
            "images_payload": json.loads(body_for(False, IMAGE_MODEL, "images")),
            "groups": {group: what for group, (_, what) in GROUPS.items()},
        },
        "scenarios": {},
    }
    report: list[str] = []
    try:
        selected = select(scenarios(args.quick), args.only)
        upstream, upstream_url = start_upstream(args)
        upstream_check(upstream_url, args.chunks)
        targets = [Target("upstream", upstream_url, "sk-bench", upstream, "upstream")]
        monitor.add("upstream", lambda: tree(upstream.pid))
        monitor.add("postgres", postgres_processes, periodic=False)
        monitor.add("driver", driver_processes)

        floor = start_floor(args, upstream_url)
        targets.append(floor)
        monitor.add("floor", lambda: tree(floor.service.pid))

        openbili = start_openbili(args, upstream_url)
        targets.append(openbili)
        monitor.add("openbili", lambda: tree(openbili.service.pid))
        output["config"]["openbili"] = openbili.notes

        if args.litellm:
            litellm = start_litellm(args, upstream_url)
            if litellm is not None:
                targets.append(litellm)
                monitor.add("litellm", lambda: tree(litellm.service.pid))
                output["config"]["litellm_version"] = litellm.notes.get("version")
                output["config"]["litellm"] = litellm.notes
        output["config"]["targets"] = [t.name for t in targets]
        monitor.start()

        results: dict[str, dict[str, dict]] = {}
        for scenario in selected:
            results[scenario.name] = {}
            for target in targets:
                say(f"{scenario.name}: {target.name}")
                results[scenario.name][target.name] = measure(target, scenario, monitor, args.stagger_ms)
            text = table(scenario, results[scenario.name])
            print("\n" + text + "\n", flush=True)
            report.append(text)
        output["scenarios"] = results

        ratio_text, ratio_data = ratios(results)
        if ratio_data:
            print(ratio_text + "\n", flush=True)
            report.append(ratio_text)
        output["ratios"] = ratio_data
        check_text, checks = targets_check(results, ratio_data)
        print(check_text + "\n", flush=True)
        report.append(check_text)
        output["targets"] = checks

        if args.profile:
            py_spy = find_py_spy()
            by_name = {s.name: s for s in scenarios(args.quick)}
            output["profiles"] = {}
            if py_spy is None:
                say("profile: py-spy not found (pip install py-spy into var/bench/litellm-venv); skipped")
            for target in targets:
                if py_spy is None or target.name == "upstream":
                    continue
                text, data = profile(target, by_name["nonstream_c32"], py_spy)
                print("\n" + text + "\n", flush=True)
                report.append(text)
                output["profiles"][target.name] = data

        if args.soak > 0:
            text, data = soak(openbili, args.soak, monitor, upstream_url)
            print("\n" + text + "\n", flush=True)
            report.append(text)
            output["soak"] = data

        output["billing"] = billing_check()
        usage = ", ".join(f"{r['billing_result']}/{r['status']}: {r['count']}" for r in output["billing"]["usage_rows"])
        images = output["billing"]["stored_images"]
        text = (
            f"== Openbili ledger after the run ==\n  usage rows: {usage}\n  holds: {output['billing']['holds']}\n"
            f"  stored images: {images['rows']} rows, {images['files']} files in {IMAGES_DIR.relative_to(BASE)} "
            f"({images['image_requests_ok']} image generations answered 200)"
        )
        print(text, flush=True)
        report.append(text)
        output["seconds"] = round(time.monotonic() - started, 1)
        output["report"] = "\n\n".join(report)
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(output, indent=2, default=str) + "\n")
        say(f"wrote {path} ({output['seconds']:.0f} s in all); service logs in {VAR}")
        return 0
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        try:
            monitor.stop()
        finally:
            for service in reversed(STARTED):
                service.stop()


if __name__ == "__main__":
    sys.exit(main())
