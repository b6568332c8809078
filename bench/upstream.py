"""The benchmark's fake upstream: ``openbili.fake_upstream`` on uvloop, request recording off.

    .venv/bin/python bench/upstream.py --port 18300 [--latency-ms 0] [--chunks 8] [--chunk-delay-ms 0] \
        [--fault-rate 0.05 --fault-seed 1]

Same wire formats (stream and non-stream), scenarios and token formula as the fake upstream the
tests use (openbili/fake_upstream/server.py); this wrapper only runs it on uvloop when that is
installed (it comes with uvicorn[standard]) and forces ``--no-record``, so the upstream spends as
little CPU per request as possible and every target is measured against the same cheap upstream.

The bench uses four of its formats (make_app routes every path the fake upstream knows, so this
wrapper adds none of its own):

* ``POST .../v1/chat/completions`` (OpenAI chat; ``Authorization: Bearer``), for bench-model.
* ``POST .../v1/responses`` (OpenAI Responses; Bearer), for bench-model and, from the floor's
  pass-through, the Claude model. Non-stream: a ``response`` object with one ``message`` output item
  and usage. Stream: response.created, response.in_progress, response.output_item.added,
  response.content_part.added, response.output_text.delta once per piece, response.output_text.done,
  response.content_part.done, response.output_item.done, response.completed (with the usage). A
  request without ``store: false`` is kept, as OpenAI does, in a bounded in-memory table (the newest
  1,000), so a Responses request costs the upstream one dictionary insert more than a chat one.
* ``POST .../v1/images/generations`` (OpenAI Images; Bearer), for bench-image: gpt-image's answer,
  ``data[].b64_json`` of a tiny PNG (70 bytes), at once, with usage.
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
  format). bench/run.py checks this sequence, the Responses one and the image answer against live
requests before it measures anything.

Injected faults (bench/run.py --soak): off unless ``--fault-rate`` is given or the rate is set at
run time with ``POST /__bench__/faults {"rate": 0.05, "seed": 1}`` (``GET`` returns the calls
seen and the faults injected by kind since the last POST). While on, each generation or
count_tokens call draws from a seeded random generator: with probability ``rate`` it is answered
by one of FAULTS (a scenario of the fake upstream, chosen by weight) instead of normally. The
draw happens where every such request asks for its scenario (``UpstreamState.take``, replaced on
the instance only while the rate is above 0), so with the rate at 0 (every ordinary bench
scenario) the upstream's code path per request is the one it had before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from openbili.fake_upstream import Scenario, UpstreamState, make_app
from openbili.fake_upstream.__main__ import _parse

# name -> (weight, what the upstream does instead of answering). A cut sends 3 content pieces of a
# stream (half the body of a non-stream answer) and drops the connection; "timeout" never answers,
# so the gateway's route read timeout fires (bench/run.py --soak sets it to SOAK_ROUTE_TIMEOUT).
FAULTS: dict[str, tuple[int, Scenario]] = {
    "500": (20, Scenario(status=500, times=0)),
    "503": (10, Scenario(status=503, times=0)),
    "429": (20, Scenario(status=429, retry_after=1, times=0)),
    "cut": (20, Scenario(cut_after_chunks=3, times=0)),
    "slow": (15, Scenario(delay_first_byte_ms=1000, times=0)),
    "timeout": (15, Scenario(hang=True, times=0)),
}


class FaultyState(UpstreamState):
    """The fake upstream's state, answering a share of the calls with a fault (see the docstring)."""

    def __init__(self, **opts: Any) -> None:
        super().__init__(**opts)
        self.configure_faults(0.0, 0)

    def configure_faults(self, rate: float, seed: int) -> None:
        self.fault_rate = rate
        self.rng = random.Random(seed)
        self.calls = 0
        self.faults = dict.fromkeys(FAULTS, 0)
        # While off, UpstreamState.take answers untouched: the other bench scenarios pay nothing.
        if rate:
            self.take = self._take_or_fault  # type: ignore[method-assign]
        else:
            self.__dict__.pop("take", None)

    def _take_or_fault(self, model: str | None, path: str, generation: bool) -> Scenario | None:
        if generation:
            self.calls += 1
            if self.rng.random() < self.fault_rate:
                (name,) = self.rng.choices(list(FAULTS), weights=[w for w, _ in FAULTS.values()])
                self.faults[name] += 1
                return FAULTS[name][1]
        return UpstreamState.take(self, model, path, generation)

    def report(self) -> dict[str, Any]:
        return {"rate": self.fault_rate, "calls": self.calls, "faults": dict(self.faults)}


def faults_control(state: FaultyState):
    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            data = await request.json()
            state.configure_faults(float(data.get("rate", 0)), int(data.get("seed", 0)))
        return web.json_response(state.report())

    return control


async def serve(argv: list[str]) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--fault-rate", type=float, default=0.0, help="share of calls answered with a fault")
    extra.add_argument("--fault-seed", type=int, default=0)
    faults, rest = extra.parse_known_args(argv)
    args = _parse(rest)
    state = FaultyState(
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        api_key=args.api_key,
        record=not args.no_record,
    )
    state.configure_faults(faults.fault_rate, faults.fault_seed)
    app = make_app(state)
    # aiohttp matches the most explicit path first, so the catch-all of make_app does not shadow it.
    app.router.add_route("*", "/__bench__/faults", faults_control(state))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"Fake upstream listening on http://{host}:{port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        state.stopping = True
        await runner.cleanup()


def run(argv: list[str]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio still works, only a little slower
        pass
    if "--no-record" not in argv:
        argv = [*argv, "--no-record"]
    asyncio.run(serve(argv))


if __name__ == "__main__":
    run(sys.argv[1:])
