"""The secret scan of a whole suite run's logs (issue 15, Deliver 3): no log line of any process the
suite ran holds a key's secret or hash, a personal token, an upstream secret or prompt text.

How it works (a pytest plugin, registered by tests/conftest.py):

- Every test process logs to `<dir>/<worker>-<pid>.jsonl` (the JSON format of production, at INFO,
  every logger) besides what pytest shows (openbili/test_settings.py). The subprocesses the suite
  starts (Celery workers, the fault stack's gateways) log to files under pytest's base temporary
  directory or copied to `<dir>` (tests/faults/harness.py).
- What must not leak is recorded as the suite makes it, in `<dir>/secrets-<pid>.txt`: each API
  key and personal token generated in a test process, with its SHA-256; each upstream secret and
  each prompt text as the fake upstream received them (so also those a subprocess gateway sent).
- At the end of the session (on the xdist controller: after every worker) every log file is
  scanned: for those values, and for any string shaped like a key or a personal token (a
  subprocess's own keys are not recorded, their shape is enough). A finding fails the run and is
  printed with the file and line.

`scan()` is tested on its own (tests/ops/test_log_scan.py), so that a scan that finds nothing
means nothing was there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_SHAPE = re.compile(r"sk-ob-[A-Za-z0-9_-]{43}")
TOKEN_SHAPE = re.compile(r"obt_[A-Za-z0-9_-]{43}")
MIN_PROMPT = 16  # shorter texts ("Hello", "Be terse.") are words any line may hold
MIN_SECRET = 8
MIN_DISTINCT = 8  # distinct characters a prompt needs to be told from filler (the fuzz tests send "x" * n)


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


class Registry:
    """What must not appear in any log, appended to by each process as the suite runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"secrets-{os.getpid()}.txt"
        self.seen: set[tuple[str, str]] = set()

    def add(self, kind: str, value: str) -> None:
        value = value.strip()
        if len(value) < (MIN_PROMPT if kind == "prompt" else MIN_SECRET) or "\n" in value or (kind, value) in self.seen:
            return
        if kind == "prompt" and len(set(value)) < MIN_DISTINCT:  # "xxxx…", "aaaa…": filler, not a prompt
            return
        self.seen.add((kind, value))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps([kind, value]) + "\n")

    def add_secret(self, kind: str, secret: str) -> None:
        self.add(kind, secret)
        self.add(f"{kind} hash", hashlib.sha256(secret.encode()).hexdigest())

    @staticmethod
    def load(directory: Path) -> dict[str, str]:
        """{value: kind} of every process's records."""
        values: dict[str, str] = {}
        for path in directory.glob("secrets-*.txt"):
            for line in path.read_text(encoding="utf-8").splitlines():
                kind, value = json.loads(line)
                values[value] = kind
        return values


def prompts_of(body: object) -> Iterable[str]:
    """The texts a request asks a model about: every string under the keys that carry prompts in
    the OpenAI, Anthropic and Gemini formats (messages, input, system, instructions, contents,
    prompt), however nested."""
    carriers = {"messages", "input", "system", "instructions", "contents", "prompt", "systemInstruction"}

    def strings(value: object) -> Iterable[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in ("type", "role", "id", "call_id", "tool_use_id", "name", "mime_type", "mimeType"):
                    yield from strings(item)

    if isinstance(body, dict):
        for key, value in body.items():
            if key in carriers:
                yield from strings(value)


def scan(files: Iterable[Path], values: dict[str, str]) -> list[Finding]:
    findings = []
    needles = sorted(values, key=len, reverse=True)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for shape, what in ((KEY_SHAPE, "an API key"), (TOKEN_SHAPE, "a personal token")):
            for match in shape.finditer(text):
                findings.append(
                    Finding(path, text.count("\n", 0, match.start()) + 1, f"{what} ({match.group()[:10]}…)")
                )
        for needle in needles:
            at = text.find(needle)
            if at >= 0:
                shown = needle[:10] + "…" if values[needle] != "prompt" else needle[:40]
                findings.append(Finding(path, text.count("\n", 0, at) + 1, f"{values[needle]} ({shown!r})"))
    return findings


def log_files(*roots: Path) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl")]
    return found


# --- the plugin ----------------------------------------------------------------------------------

DIR_ENV = "OPENBILI_TEST_LOG_DIR"


def log_dir() -> Path:
    """This run's directory: made by openbili/test_settings.py in the controller, inherited by xdist
    workers (their environment is the controller's)."""
    return Path(os.environ[DIR_ENV])


def start_recording(monkeypatch) -> None:
    """Record what must not leak (the records themselves go to the log directory by LOGGING, see
    openbili/test_settings.py)."""
    from billing import crypto, keys
    from openbili.api import models as token_models
    from openbili.api import views as token_views
    from openbili.fake_upstream import server as fake_upstream

    registry = Registry(log_dir())

    def recorded(generate, kind):
        def generate_and_record() -> str:
            secret = generate()
            registry.add_secret(kind, secret)
            return secret

        return generate_and_record

    monkeypatch.setattr(keys, "key_generate", recorded(keys.key_generate, "API key"))
    token_generate = recorded(token_models.token_generate, "personal token")
    monkeypatch.setattr(token_models, "token_generate", token_generate)
    monkeypatch.setattr(token_views, "token_generate", token_generate)
    encrypt = crypto.encrypt

    def encrypt_and_record(plaintext: str) -> str:
        registry.add("upstream secret", plaintext)
        return encrypt(plaintext)

    monkeypatch.setattr(crypto, "encrypt", encrypt_and_record)
    add_record = fake_upstream.UpstreamState.add_record

    def add_and_record(state, rec) -> None:
        for name in ("authorization", "x-api-key", "x-goog-api-key"):
            value = rec["headers"].get(name, "")
            registry.add("upstream secret", value.removeprefix("Bearer ").removeprefix("bearer "))
        for text in prompts_of(rec.get("json")):
            registry.add("prompt", text)
        add_record(state, rec)

    monkeypatch.setattr(fake_upstream.UpstreamState, "add_record", add_and_record)


def finish(session) -> None:
    """On the controller, after every test: scan, and fail the run on a finding."""
    if hasattr(session.config, "workerinput") or DIR_ENV not in os.environ:
        return
    directory = Path(os.environ[DIR_ENV])
    roots = [directory]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        with contextlib.suppress(Exception):  # no test asked for a temporary directory
            roots.append(factory.getbasetemp())
    files = log_files(*roots)
    findings = scan(files, Registry.load(directory))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = f"log scan: {len(files)} log files, {sum(f.stat().st_size for f in files if f.exists()):,} bytes"
    if findings:
        message = "\n".join(
            [f"{summary}: {len(findings)} secret(s) or prompt(s) in the logs", *map(str, findings[:50])]
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = 1
    elif reporter is not None:
        reporter.write_line(f"{summary}: no secret, hash or prompt text")
