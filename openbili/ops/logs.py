"""Log lines as JSON objects, one per line (OPENBILI_LOG_FORMAT=json, the default), or as plain
text for a developer's terminal (OPENBILI_LOG_FORMAT=text; `scripts/run` uses it).

Every line has `ts` (UTC, milliseconds), `level`, `logger` and `message`; a record logged with
`extra={"fields": {...}}` carries those fields too, at the top level — the gateway's one line per
request (logger `openbili.access`, usage/gateway/observe.py) is such a record. An exception's
traceback goes in `exc` (tracebacks show code, never a value).

What no line may hold — a key's secret or hash, an upstream secret, prompt text — is kept out
where lines are made, not filtered here: a filter could only catch what it recognises. The test
suite's logs are scanned for them (tests/log_scan.py).
"""

from __future__ import annotations

import json
import logging
import time

ACCESS = "openbili.access"

# What no line here shows is not gathered for each record either (the logging module's documented
# "Optimization" switches): the calling frame's file and line, the thread, the process. The
# gateway logs a line per request; these were a third of its cost.
logging._srcfile = None  # type: ignore[attr-defined]
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        if seconds != self._second:  # one strftime a second, not one a line
            self._second, self._stamp = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        line = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with a record's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return text
        return (
            text + " " + " ".join(f"{name}={_text(value)}" for name, value in fields.items() if value not in ("", None))
        )


def _text(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)
