"""The benchmark's fake upstream: ``openbili.fake_upstream`` on uvloop, request recording off.

    .venv/bin/python bench/upstream.py --port 18300 [--latency-ms 0] [--chunks 8] [--chunk-delay-ms 0]

Same wire formats (stream and non-stream), scenarios and token formula as the fake upstream the
tests use (openbili/fake_upstream/server.py); this wrapper only runs it on uvloop when that is
installed (it comes with uvicorn[standard]) and forces ``--no-record``, so the upstream spends as
little CPU per request as possible and every target is measured against the same cheap upstream.

The bench uses two of its formats:

* ``POST .../v1/chat/completions`` (OpenAI chat; ``Authorization: Bearer``), for bench-model.
* ``POST .../v1/messages`` (Anthropic Messages; ``x-api-key`` or Bearer, ``anthropic-version``
  required), for the Claude model. Non-stream: ``{"id": "msg_...", "type": "message", "role":
  "assistant", "model", "content": [{"type": "text", "text"}], "stop_reason", "stop_sequence",
  "usage": {"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
  "output_tokens", ...}}``. Stream, the real API's event sequence, each as ``event: NAME`` +
  ``data: {"type": NAME, ...}``: message_start (the message with empty content, usage with
  input_tokens and output_tokens 1), content_block_start (index 0, an empty text block), ping,
  content_block_delta (``{"type": "text_delta", "text": piece}``) once per piece,
  content_block_stop, message_delta (``{"stop_reason": "end_turn" | "max_tokens",
  "stop_sequence": null}`` and ``usage.output_tokens``), message_stop. Each event is one write,
  built like the chat chunks (one small JSON dump), so a Messages request costs the upstream
  about what a chat request does (measured: ~0.15 ms CPU non-stream, ~0.35 ms stream, either
  format). bench/run.py checks this sequence against a live request before it measures anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openbili.fake_upstream.__main__ import main


def run(argv: list[str]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio still works, only a little slower
        pass
    if "--no-record" not in argv:
        argv = [*argv, "--no-record"]
    main(argv)


if __name__ == "__main__":
    run(sys.argv[1:])
