"""A real Celery worker process for the tests that need one (exports, invoices).

`celery_worker` starts `celery -A openbili worker` in its own process group against the test
database and the suite's Redis as the broker, on a queue of its own (so nothing else's tasks reach
it, nor its tasks anything else), and points this process's Celery app at the same broker and
queue, not eager, for the test's duration. The test's data must be committed for the worker to see
it: the fixture brings `transactional_db`. `kill()` is a SIGKILL of the worker mid-task; a worker
started once the broker's visibility timeout (a few seconds here) has passed gets the killed task
again at its start, as acks_late promises (a worker already running finds it only at kombu's next
sweep of unacked messages, about every 100 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
VISIBILITY_TIMEOUT = 4  # seconds before a killed worker's task is handed out again


def _test_database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class Worker:
    def __init__(self, log: Path, env: dict[str, str], queue: str) -> None:
        self.log_path = log
        self.env = env
        self.queue = queue
        self.process: subprocess.Popen | None = None
        self.started = 0

    def start(self, timeout: float = 30.0) -> Worker:
        self.started += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [
            sys.executable, "-m", "celery", "-A", "openbili", "worker",
            "--pool", "solo", "--queues", self.queue, "--hostname", f"{self.queue}-{self.started}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "ready." not in self.log()[offset:]:
            assert self.process.poll() is None, f"the worker exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"the worker did not start:\n{self.log()[-3000:]}"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would: no chance to ack or clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, done: Callable[[], bool], *, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; worker log:\n{self.log()[-4000:]}"
            time.sleep(0.1)


def _drop_broker_pools(app) -> None:
    """Close and forget the broker connections and producers of this process. kombu keeps its pools
    in a process-wide registry keyed by broker URL, and Celery keeps its producer pool: closing a
    pool but leaving it registered would hand the next test (same Redis URL) a closed pool."""
    import kombu.pools

    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def celery_worker(transactional_db, tmp_path, monkeypatch):
    from openbili.celery import app

    if not settings.REDIS_URL:
        pytest.skip("a real worker needs REDIS_URL (scripts/test sets it)")
    queue = f"openbili-test-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "OPENBILI_INSECURE_DEV_SECRET": "1",
        "OPENBILI_VAR_DIR": os.environ.get("OPENBILI_VAR_DIR", str(settings.VAR_DIR)),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    saved = {name: app.conf[name] for name in ("broker_url", "task_always_eager", "task_default_queue")}
    monkeypatch.setenv("CELERY_BROKER_URL", settings.REDIS_URL)  # Celery reads it before its own setting
    app.conf.update(broker_url=settings.REDIS_URL, task_always_eager=False, task_default_queue=queue)
    _drop_broker_pools(app)  # a pool of the earlier broker, if one was made, is not reused
    worker = Worker(tmp_path / "worker.log", env, queue).start()
    try:
        yield worker
    finally:
        worker.stop()
        _drop_broker_pools(app)
        app.conf.update(**saved)
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)  # the queue's leftovers, if a test left any
        client.delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x166", f"{queue}\x06\x169")
        client.close()
