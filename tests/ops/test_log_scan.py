"""The suite's secret scan (tests/log_scan.py) finds what it looks for: a scan of the suite's logs
that finds nothing means nothing was there."""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
from pathlib import Path

from billing import keys
from tests import log_scan


def test_the_scan_finds_keys_hashes_upstream_secrets_and_prompts():
    # Outside pytest's temporary directory, which the suite's own scan reads: these leaks are planted.
    with tempfile.TemporaryDirectory() as directory:
        check_planted(Path(directory))


def check_planted(tmp_path: Path) -> None:
    registry = log_scan.Registry(tmp_path)
    secret = keys.KEY_START + secrets.token_urlsafe(32)  # not keys.key_generate: the suite records those
    registry.add_secret("API key", secret)
    registry.add("upstream secret", "sk-upstream-live-0123456789")
    for text in log_scan.prompts_of(
        {
            "model": "gpt-5",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is my bank PIN again?"}]}],
        }
    ):
        registry.add("prompt", text)
    registry.add("prompt", "Hi")  # too short to tell from any word: not looked for
    registry.add("prompt", "x" * 40)  # filler, which a fuzz test sends: not looked for either
    lines = {
        "key.log": f"request with {secret} failed",
        "hash.jsonl": json.dumps({"message": "found", "key_hash": hashlib.sha256(secret.encode()).hexdigest()}),
        "upstream.log": "calling upstream with sk-upstream-live-0123456789",
        "prompt.jsonl": json.dumps({"message": "What is my bank PIN again?"}),
        "shape.log": "a subprocess's key sk-ob-" + "A" * 43,
        "token.log": "token obt_" + "b" * 43,
        "clean.jsonl": json.dumps({"message": "POST /v1/chat/completions 200", "key_prefix": secret[:12]}),
        "hi.log": "Hi there",
        "filler.log": "GET /v1/images/files/" + "x" * 60,
    }
    for name, text in lines.items():
        (tmp_path / name).write_text(text + "\n")
    findings = log_scan.scan(log_scan.log_files(tmp_path), log_scan.Registry.load(tmp_path))
    found = {finding.path.name for finding in findings}
    assert found == {"key.log", "hash.jsonl", "upstream.log", "prompt.jsonl", "shape.log", "token.log"}
    # What a finding says names the kind, never the whole secret.
    report = "\n".join(map(str, findings))
    assert secret not in report and "sk-upstream-live-0123456789" not in report


def test_prompts_are_read_from_every_format():
    bodies = [
        {"messages": [{"role": "user", "content": "An OpenAI chat prompt text"}]},
        {
            "system": "An Anthropic system prompt",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
        },
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "A Responses input text"}]}]},
        {"contents": [{"role": "user", "parts": [{"text": "A Gemini contents text"}]}]},
        {"prompt": "An image prompt, a cat"},
    ]
    found = {text for body in bodies for text in log_scan.prompts_of(body)}
    assert {
        "An OpenAI chat prompt text",
        "An Anthropic system prompt",
        "A Responses input text",
        "A Gemini contents text",
        "An image prompt, a cat",
    } <= found
    assert "user" not in found and "text" not in found  # roles and types are not prompts
