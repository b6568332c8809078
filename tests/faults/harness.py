"""Real processes for the fault tests (issue 9, Deliver 2), and the checks every test ends with.

The tests kill and restart PostgreSQL and Redis, so they never touch the machine's shared servers:
`Stack` starts a PRIVATE PostgreSQL cluster (initdb into a temporary directory, trust auth, a free
port, fsync off) and a PRIVATE redis-server, migrates and provisions a database there
(provision.py, in a process of its own), runs the fake upstream in a thread of the test process
and the gateway as a real `uvicorn openbili.asgi:application --http openbili.http_protocol:HttpProtocol`
subprocess. Everything it started is stopped, and its directory removed, by `Stack.close()`.

`reconcile()` is the check after each fault, by direct SQL against the private database: one row
per request sent with the account's key, none pending, no open hold, every account's balance equal
to the sum of its ledger entries (and its reservation to the sum of its open holds), every row's
cost equal to what the ledger charged for it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
from psycopg.rows import dict_row

from billing import money
from openbili.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
DB_NAME = "openbili_faults"

GPT = "gpt-5"  # an OpenAI route to the fake upstream
CLAUDE = "claude-sonnet-4-6"  # an Anthropic route to the fake upstream
PRICES = {
    GPT: {"input_per_mtok": "1.25", "output_per_mtok": "10", "cached_input_per_mtok": "0.125"},
    CLAUDE: {
        "input_per_mtok": "3",
        "output_per_mtok": "15",
        "cached_input_per_mtok": "0.30",
        "cache_write_per_mtok": "3.75",
    },
}
CREDIT = Decimal("1000")
ACCOUNTS = 24  # handed out one per test (`Stack.account()`): each test counts its own rows
RPM_LIMITED = 10  # the requests per minute of the "limited" account's key
RPM_BUSY = 1_000_000  # the "busy" account's key: limited, so every request goes through Redis, never refused

MSG = [{"role": "user", "content": "Hello from the fault tests"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], *, what: str, timeout: float = 10.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(every)


# --- processes ------------------------------------------------------------------------------------


def pg_bin() -> Path:
    """The newest PostgreSQL server binaries on the machine. Missing: a loud failure, never a skip
    (CI runs on the same kind of machine, with them)."""
    candidates = sorted(
        (Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(
            "the fault tests need PostgreSQL's server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: "
            "install the postgresql package"
        )
    return candidates[-1]


def server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: when we are root, its commands run as `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root, and there is no 'postgres' user to run the private cluster as") from None


class Service:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the whole process group: nothing runs a handler, nothing is flushed."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill9()  # whatever is left in the group
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Postgres:
    """A private cluster in `root`, on a free port of 127.0.0.1, trust auth, fsync off."""

    def __init__(self, root: Path) -> None:
        self.bin = pg_bin()
        self.user = server_user()
        self.dir = root / "pg"
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        self.started = False

    def url(self, db: str = DB_NAME) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        user = self.user

        def demote() -> None:  # in the child, before exec
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "HOME": str(self.dir)}
        result = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            env=env,
            cwd=self.dir,
            preexec_fn=demote,  # drops root in the child, before exec
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write("\n# the fault tests' private cluster\n")
            fh.writelines(f"{name} = {value}\n" for name, value in conf.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "30", "start")
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop")
        self.started = False

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "30", "-m", "fast", "restart")
        self.started = True

    def create_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")

    def destroy(self) -> None:
        if self.data.exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "10", "-m", "immediate", "stop", timeout=20)
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():  # pg_ctl could not stop it: the postmaster's pid is the file's first line
                with contextlib.suppress(Exception):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


class RedisServer(Service):
    """A private redis-server on a free port, no persistence (a restart starts it empty)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        directory = root / "redis"
        directory.mkdir()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(directory), "--daemonize", "no", "--protected-mode", "no"]
        super().__init__("redis", argv, env={"PATH": os.environ.get("PATH", "")}, log=directory / "redis.log")
        if shutil.which("redis-server") is None:
            raise RuntimeError("the fault tests need redis-server on PATH")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        wait_until(self.ping, what="the private redis-server", timeout=10)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP, its raw reply (enough for KEYS and GET here)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload)
            time.sleep(0.05)
            return sock.recv(65536)


class Gateway(Service):
    """The gateway as production runs it: one uvicorn process, the bounded-head HTTP protocol."""

    def __init__(self, root: Path, env: dict[str, str], health_key: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_key = health_key
        argv = [PY, "-m", "uvicorn", "openbili.asgi:application", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--http", "openbili.http_protocol:HttpProtocol", "--no-access-log", "--log-level", "warning"]
        argv += ["--timeout-graceful-shutdown", "3"]
        super().__init__("gateway", argv, env=env, log=root / "gateway.log")
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "a") as fh:
            fh.write(f"\n===== gateway start #{self.starts} =====\n")
        super().start()

        def ready() -> bool:
            assert self.alive(), f"the gateway exited:\n{self.log()[-3000:]}"
            try:
                response = httpx.get(
                    self.url + "/v1/models", headers={"Authorization": f"Bearer {self.health_key}"}, timeout=2
                )
            except httpx.TransportError:
                return False
            return response.status_code == 200 and GPT in response.text

        wait_until(ready, what="the gateway serving /v1/models", timeout=30, every=0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_since(self, offset: int) -> str:
        return self.log()[offset:]


# --- the database, by direct SQL --------------------------------------------------------------------


class Database:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, sql: str, params: dict | tuple | None = None) -> list[dict]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def rows(self, account_id: int) -> list[dict]:
        return self.query("SELECT * FROM usage_usagerecord WHERE account_id = %s ORDER BY id", (account_id,))


def reconcile(db: Database, account: Account, *, sent: int, request_ids=(), timeout: float = 10.0) -> dict[str, dict]:
    """The check after every fault. Waits up to `timeout` for late rows and settles, then asserts:
    one row per request sent with the account's key (each request id a client saw has exactly one),
    none pending, no open hold; every account's balance = the sum of its ledger entries and its
    reservation = the sum of its open holds; each row's cost = what the ledger charged for it.
    Returns the account's rows by request id."""

    def settled() -> bool:
        found = db.query(
            "SELECT count(*) AS n, count(*) FILTER (WHERE billing_result = 'pending') AS pending,"
            " (SELECT count(*) FROM billing_hold WHERE account_id = %(a)s AND resolved_at IS NULL) AS holds"
            " FROM usage_usagerecord WHERE account_id = %(a)s",
            {"a": account.id},
        )[0]
        return found["n"] >= sent and found["pending"] == 0 and found["holds"] == 0

    with contextlib.suppress(AssertionError):
        wait_until(settled, what="rows and settles", timeout=timeout, every=0.1)
    rows = db.rows(account.id)
    by_id = {row["request_id"]: row for row in rows}
    pending = [row["request_id"] for row in rows if row["billing_result"] == "pending"]
    holds = db.query(
        "SELECT id, request_id, amount, expires_at FROM billing_hold WHERE account_id = %s AND resolved_at IS NULL",
        (account.id,),
    )
    assert len(rows) == sent, f"{len(rows)} usage rows for {sent} requests sent with the key"
    assert len(by_id) == len(rows)
    missing = [request_id for request_id in request_ids if request_id and request_id not in by_id]
    assert not missing, f"requests answered with an id but without a usage row: {missing[:5]}"
    assert not pending, f"{len(pending)} rows still pending: {pending[:5]}"
    assert not holds, f"{len(holds)} holds still open: {holds[:5]}"
    accounts = db.query(
        "SELECT a.id, a.balance, a.reserved,"
        " (SELECT COALESCE(sum(e.amount), 0) FROM billing_ledgerentry e WHERE e.account_id = a.id) AS ledger,"
        " (SELECT COALESCE(sum(h.amount), 0) FROM billing_hold h"
        "   WHERE h.account_id = a.id AND h.resolved_at IS NULL) AS held"
        " FROM billing_account a ORDER BY a.id"
    )
    wrong = [a for a in accounts if a["balance"] != a["ledger"] or a["reserved"] != a["held"]]
    assert not wrong, f"accounts whose balance is not their ledger sum, or reserved not their open holds: {wrong}"
    charged = {
        entry["request_id"]: -entry["amount"]
        for entry in db.query(
            "SELECT request_id, sum(amount) AS amount FROM billing_ledgerentry"
            " WHERE account_id = %s AND kind = 'usage' GROUP BY request_id",
            (account.id,),
        )
    }
    unequal = [
        (row["request_id"], row["cost_usd"], charged.get(row["request_id"], 0))
        for row in rows
        if row["cost_usd"] != charged.get(row["request_id"], 0)
    ]
    assert not unequal, f"rows whose cost is not what the ledger charged: {unequal[:5]}"
    assert set(charged) <= set(by_id), "a usage charge without its usage row"
    return by_id


def row_cost(row: dict) -> Decimal:
    """What a row's own tokens cost at its model's price."""
    model = GPT if row["endpoint"] == PATHS["chat"] else CLAUDE
    prices = money.Prices(**{name: Decimal(value) for name, value in PRICES[model].items()})
    usage = money.TokenUsage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
    )
    return money.usage_cost(prices, usage)


# --- clients ----------------------------------------------------------------------------------------


@dataclass
class Account:
    name: str
    id: int
    key_id: int
    secret: str


@dataclass
class Answer:
    """What one client saw of one request."""

    surface: str  # "chat" | "messages"
    stream: bool
    started: float  # time.monotonic()
    elapsed: float = 0.0
    status: int | None = None
    request_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None  # a non-stream answer's JSON, or a stream's error event
    chunks: int = 0  # content pieces received
    complete: bool = False  # a whole answer: JSON 200, or a stream with its terminator and no error
    transport_error: str | None = None  # the connection failed (class name): no answer

    @property
    def error_code(self) -> str | None:
        error = (self.body or {}).get("error")
        return error.get("code") if isinstance(error, dict) else None

    def describe(self) -> str:
        return (
            f"{self.surface}{' stream' if self.stream else ''} status={self.status} code={self.error_code} "
            f"complete={self.complete} chunks={self.chunks} elapsed={self.elapsed:.2f}s error={self.transport_error}"
        )


PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}


def raw_head(url: str, secret: str, surface: str, *, content_length: int) -> bytes:
    """A request's head as bytes, for clients that misbehave at the socket."""
    host = url.removeprefix("http://")
    return (
        f"POST {PATHS[surface]} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n"
        f"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def request_body(surface: str, *, stream: bool, max_tokens: int = 64) -> dict:
    if surface == "chat":
        body: dict = {"model": GPT, "messages": MSG, "max_tokens": max_tokens}
    else:
        body = {"model": CLAUDE, "messages": MSG, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return body


def send(
    url: str,
    secret: str,
    *,
    surface: str = "chat",
    stream: bool = False,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
    on_chunk: Callable[[Answer], None] | None = None,
    abort_after: int | None = None,
    max_tokens: int = 64,
) -> Answer:
    """One request as an SDK would send it; never raises for what the server or network did.
    `abort_after`: the client closes the connection once it has that many content pieces."""
    path = PATHS[surface]
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    if surface == "messages":
        headers["anthropic-version"] = "2023-06-01"
    answer = Answer(surface=surface, stream=stream, started=time.monotonic())
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        body = json.dumps(request_body(surface, stream=stream, max_tokens=max_tokens)).encode()
        with http.stream("POST", url + path, content=body, headers=headers, timeout=timeout) as response:
            answer.status = response.status_code
            answer.headers = dict(response.headers)
            answer.request_id = response.headers.get("x-request-id")
            if stream and response.status_code == 200:
                read_stream(answer, response, on_chunk, abort_after)
            else:
                raw = response.read()
                with contextlib.suppress(ValueError):
                    answer.body = json.loads(raw)
                answer.complete = response.status_code == 200 and answer.body is not None
    except (httpx.HTTPError, OSError) as exc:
        answer.transport_error = type(exc).__name__
    finally:
        answer.elapsed = time.monotonic() - answer.started
        if own:
            http.close()
    return answer


def read_stream(
    answer: Answer, response: httpx.Response, on_chunk: Callable[[Answer], None] | None, abort_after: int | None
) -> None:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
            continue
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            answer.complete = answer.body is None
            continue
        try:
            payload = json.loads(data)
        except ValueError:
            continue
        if event == "error" or "error" in payload:
            answer.body = payload
            answer.complete = False
        elif event == "message_stop":
            answer.complete = answer.body is None
        elif is_content(payload):
            answer.chunks += 1
            if on_chunk is not None:
                on_chunk(answer)
            if abort_after is not None and answer.chunks >= abort_after:
                return  # leaving the response unread closes its connection


def is_content(payload: dict) -> bool:
    if payload.get("type") == "content_block_delta":
        return True
    return any((choice.get("delta") or {}).get("content") for choice in payload.get("choices") or [])


def assert_error_format(answer: Answer, *, status: int, code: str) -> None:
    """An error in the surface's own format, carrying the request id of its header."""
    assert answer.status == status, answer.describe()
    body = answer.body or {}
    if answer.surface == "messages":
        assert body.get("type") == "error", body
        assert body["error"].get("code") == code, body
        assert body.get("request_id") == answer.request_id, body
    else:
        assert body["error"].get("code") == code, body
        assert body["error"].get("request_id") == answer.request_id, body
    assert answer.request_id and answer.request_id.startswith("req_")


class Load:
    """`concurrency` clients sending `mix` ((surface, stream) pairs, round robin) back to back until
    the block ends (pausing `backoff` after an error answer); every answer is kept."""

    def __init__(
        self, url: str, secret: str, *, concurrency: int, mix, timeout: float = 10.0, backoff: float = 0.1
    ) -> None:
        self.url, self.secret, self.mix, self.timeout = url, secret, list(mix), timeout
        self.backoff = backoff  # after an error answer, as an SDK backs off before its retry
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)]

    def _run(self, index: int) -> None:
        turn = index
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                surface, stream = self.mix[turn % len(self.mix)]
                turn += 1
                answer = send(
                    self.url, self.secret, surface=surface, stream=stream, client=client, timeout=self.timeout
                )
                with self._lock:
                    self.answers.append(answer)
                if answer.status != 200:
                    self._stop.wait(self.backoff)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)


# --- the stack --------------------------------------------------------------------------------------


class Stack:
    """The private PostgreSQL and Redis, the fake upstream, the gateway; `close()` ends them all."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="openbili-faults-"))
        os.chmod(self.root, 0o755)  # the cluster's user must reach its directory
        try:
            self.pg = Postgres(self.root)
            self.redis = RedisServer(self.root)
        except BaseException:  # no server binaries: nothing started, nothing left behind
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.db = Database(self.pg.url())
        self.upstream: FakeUpstream | None = None
        self.gateway: Gateway | None = None
        self.accounts: list[Account] = []
        self.named: dict[str, Account] = {}
        # Set by a test that took the database away or killed the gateway: the next test gets a
        # fresh gateway process, so that what one fault left behind is not blamed on the next.
        self.disturbed = False

    def start(self) -> Stack:
        self.pg.init()
        self.pg.start()
        self.pg.create_database()
        self.redis.start()
        self.upstream = FakeUpstream().start()
        self.env = self.environment()
        self.provision()
        self.gateway = Gateway(self.root, self.env, health_key=self.named["health"].secret)
        self.gateway.start()
        return self

    def environment(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "OPENBILI_", "DJANGO_", "PYTEST_"))
        }
        env.update(
            DATABASE_URL=self.pg.url(),
            REDIS_URL=self.redis.url,
            OPENBILI_INSECURE_DEV_SECRET="1",
            CELERY_BROKER_URL="memory://",
            DJANGO_SETTINGS_MODULE="openbili.settings",
            OPENBILI_VAR_DIR=str(self.root / "var"),  # not the checkout's var/ (its secret key, its embedded URL)
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
        )
        return env

    def manage(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [PY, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
        return result.stdout

    def provision(self) -> None:
        assert self.upstream is not None
        spec = {
            "models": [
                {
                    "name": GPT,
                    "owned_by": "openai",
                    "context_window": 400_000,
                    "max_output_tokens": 128_000,
                    "prices": PRICES[GPT],
                    "base_url": self.upstream.url + "/v1",
                    "provider": "openai",
                    "upstream_model": GPT,
                },
                {
                    "name": CLAUDE,
                    "owned_by": "anthropic",
                    "context_window": 200_000,
                    "max_output_tokens": 64_000,
                    "prices": PRICES[CLAUDE],
                    "base_url": self.upstream.url,
                    "provider": "anthropic",
                    "upstream_model": "claude-up",
                },
            ],
            "accounts": [{"name": "health", "credit": str(CREDIT)}]
            + [{"name": "limited", "credit": str(CREDIT), "rpm": RPM_LIMITED}]
            + [{"name": "busy", "credit": str(CREDIT), "rpm": RPM_BUSY}]
            + [{"name": f"test-{i}", "credit": str(CREDIT)} for i in range(ACCOUNTS)],
        }
        result = subprocess.run(
            [PY, "-m", "tests.faults.provision", json.dumps(spec)],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"provisioning failed:\n{result.stdout}\n{result.stderr[-3000:]}"
        made = json.loads(result.stdout.strip().splitlines()[-1])
        for name, info in made.items():
            account = Account(name, info["account_id"], info["key_id"], info["secret"])
            self.named[name] = account
            if name.startswith("test-"):
                self.accounts.append(account)

    def account(self) -> Account:
        assert self.accounts, f"more tests than provisioned accounts: raise ACCOUNTS ({ACCOUNTS})"
        return self.accounts.pop(0)

    def sweep_expired(self, request_ids: list[str]) -> str:
        """What the sweeper does for requests whose process died, without waiting for their holds'
        TTL: their expiry is moved into the past, then `manage.py sweep` runs."""
        self.db.query(
            "UPDATE billing_hold SET expires_at = now() - interval '1 second'"
            " WHERE resolved_at IS NULL AND request_id = ANY(%s) RETURNING id",
            (list(request_ids),),
        )
        return self.manage("sweep")

    def ready(self) -> Stack:
        """Everything up before a test (one that failed midway may have left PostgreSQL or Redis
        stopped, or the gateway dead; a gateway that lived through a fault is replaced), the
        upstream answering normally."""
        assert self.gateway is not None and self.upstream is not None
        if not self.pg.started:
            self.pg.start()
        if not self.redis.alive():
            self.redis.start()
        if self.disturbed or not self.gateway.alive():
            self.gateway.restart()
            self.disturbed = False
        self.upstream.reset()
        self.upstream.configure(latency_ms=0, chunks=8, chunk_delay_ms=0)
        return self

    def close(self) -> None:
        for step in (
            lambda: self.gateway and self.gateway.stop(),
            lambda: self.upstream and self.upstream.stop(),
            self.redis.stop,
            self.pg.destroy,
        ):
            with contextlib.suppress(Exception):
                step()
        suite_logs = os.environ.get("OPENBILI_TEST_LOG_DIR")  # for the suite's secret scan (tests/log_scan.py)
        if suite_logs:
            for log in self.root.glob("*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log, Path(suite_logs) / f"faults-{self.root.name}-{log.name}")
        if os.environ.get("OPENBILI_FAULTS_KEEP"):  # debugging: the logs stay (gateway.log, pg/postgres.log)
            print(f"fault tests' directory kept: {self.root}", file=sys.stderr)
            return
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    stack = Stack()
    try:
        yield stack.start()
    finally:
        stack.close()
