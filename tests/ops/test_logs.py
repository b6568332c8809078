"""The gateway's one log line per request and the JSON format of every line (issue 15, Deliver 3)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal

import httpx
import pytest

from openbili.ops.logs import ACCESS, JsonFormatter, TextFormatter
from usage.models import UsageRecord

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "Tell me the secret plan for the logs test"
FIELDS = {
    "request_id", "trace_id", "endpoint", "account_id", "key_prefix", "model", "route_id", "provider",
    "upstream_model", "stream", "status", "error_class", "error_code", "billing_result", "input_tokens",
    "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens", "images", "cost_usd",
    "client_disconnected", "ms", "gateway_ms", "upstream_ms", "ttfb_ms", "attempts",
}  # fmt: skip


def access_line(caplog, request_id: str) -> dict:
    """The request's line, once written: after its last byte, so maybe just after the client has it."""
    deadline = time.monotonic() + 5
    while True:
        lines = [r for r in caplog.records if r.name == ACCESS and r.fields["request_id"] == request_id]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(lines) == 1, f"{len(lines)} access lines for {request_id}"
    return json.loads(JsonFormatter().format(lines[0]))


def test_one_json_line_per_request_with_what_an_operator_needs(gateway, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-5", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"traceparent": parent},
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    line = access_line(caplog, request_id)
    row = UsageRecord.objects.get(request_id=request_id)
    assert set(line) >= FIELDS
    assert line["level"] == "info" and line["logger"] == ACCESS
    assert line["message"] == "POST /v1/chat/completions 200"
    assert line["trace_id"] == "trace_0af7651916cd43dd8448eb211c80319c" == row.trace_id
    assert line["account_id"] == gateway.account.pk
    assert line["key_prefix"] == row.key_prefix == gateway.secret[:12]
    assert (line["model"], line["route_id"], line["provider"]) == ("gpt-5", row.route_id, "openai")
    assert (line["status"], line["error_code"], line["billing_result"]) == (200, "", "billed")
    assert (line["input_tokens"], line["output_tokens"]) == (row.input_tokens, row.output_tokens)
    assert Decimal(line["cost_usd"]) == row.cost_usd > 0
    assert line["ms"] >= line["gateway_ms"] > 0 and line["upstream_ms"] > 0
    assert line["ttfb_ms"] <= line["ms"]
    assert [(a["attempt"], a["status"], a["error"]) for a in line["attempts"]] == [(1, 200, "")]
    text = json.dumps(line)
    assert gateway.secret not in text and PROMPT not in text


def test_a_refused_request_without_a_key_is_logged_with_its_error(gateway, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "gpt-5"}, timeout=10)
    assert response.status_code == 401
    line = access_line(caplog, response.headers["x-request-id"])
    assert (line["status"], line["error_code"], line["error_class"]) == (401, "invalid_api_key", "auth_or_key_scope")
    assert "account_id" not in line and line["attempts"] == []


def test_an_upstream_failure_logs_its_attempts_not_the_upstreams_words(gateway, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    gateway.upstream.script(status=400, message=f"Your prompt '{PROMPT}' is not allowed")
    response = gateway.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": PROMPT}]}
    )
    assert response.status_code == 400
    line = access_line(caplog, response.headers["x-request-id"])
    assert line["error_code"] and line["attempts"][0]["status"] == 400
    assert PROMPT not in json.dumps(line)  # the row's error_message may quote it; the log line does not carry it


def test_an_image_files_capability_url_is_not_logged(gateway, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    token = "A" * 43
    response = httpx.get(gateway.url + f"/v1/images/files/{token}.png", timeout=10)
    assert response.status_code == 404
    line = access_line(caplog, response.headers["x-request-id"])
    assert token not in json.dumps(line)
    assert line["endpoint"] == "/v1/images/files/{file}"


def test_the_text_format_for_a_terminal():
    record = logging.LogRecord(ACCESS, logging.INFO, __file__, 1, "POST %s %s", ("/v1/chat/completions", 200), None)
    record.fields = {"request_id": "req_1", "status": 200, "error_code": "", "attempts": [{"attempt": 1}]}
    text = TextFormatter().format(record)
    assert "INFO openbili.access POST /v1/chat/completions 200" in text
    assert 'request_id=req_1 status=200 attempts=[{"attempt":1}]' in text and "error_code" not in text


def python_logging(*code: str, **env: str) -> subprocess.CompletedProcess:
    script = "import django, logging; django.setup(); " + "; ".join(code)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPENBILI_LOG")}
    environ |= {"DJANGO_SETTINGS_MODULE": "openbili.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_every_other_line_is_json_by_default_and_text_on_request():
    code = (
        "log = logging.getLogger('openbili.anything')",
        "log.warning('disk %s is %d%% full', 'var', 91)",
        "exec('try:\\n 1/0\\nexcept ZeroDivisionError:\\n log.exception(\"it broke\")')",
    )
    default = python_logging(*code)
    assert default.returncode == 0, default.stderr
    lines = [json.loads(line) for line in default.stderr.splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["logger"] == "openbili.anything"]
    assert [line["message"] for line in ours] == ["disk var is 91% full", "it broke"]
    assert ours[0]["level"] == "warning" and ours[0]["ts"].endswith("Z")
    assert "ZeroDivisionError" in ours[1]["exc"]
    assert all(line.startswith("{") for line in default.stderr.splitlines() if line.strip())  # every line
    text = python_logging(*code, OPENBILI_LOG_FORMAT="text")
    assert "WARNING openbili.anything disk var is 91% full" in text.stderr
    assert not [line for line in text.stderr.splitlines() if line.startswith("{")]


def test_a_wrong_log_format_is_refused_at_startup():
    result = python_logging("pass", OPENBILI_LOG_FORMAT="yaml")
    assert result.returncode != 0
    assert "OPENBILI_LOG_FORMAT must be json or text" in result.stderr


@pytest.mark.parametrize("setting", ["0", "1"])
def test_the_access_log_can_be_turned_off(setting):
    result = python_logging(
        f"print(logging.getLogger('{ACCESS}').isEnabledFor(logging.INFO))", OPENBILI_ACCESS_LOG=setting
    )
    assert result.stdout.strip() == ("True" if setting == "1" else "False")


def test_uvicorns_own_access_log_stays_off():
    # uvicorn writes its access line only to a logger with handlers (with or without
    # --no-access-log): the gateway's line per request replaces it, and a second costs CPU.
    result = python_logging("print(logging.getLogger('uvicorn.access').hasHandlers())")
    assert result.stdout.strip() == "False", result.stderr[-2000:]
