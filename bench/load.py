"""Asyncio + aiohttp load driver: one process, one connection pool, bounded by requests AND seconds.

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1/chat/completions --key sk-ob-... \\
        --concurrency 32 --requests 100000 --duration 10 [--stream] [--warmup 50] [--json]
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1/messages --api messages \\
        --auth x-api-key --key sk-ob-... --model claude-sonnet-4-6 --concurrency 8 --stream
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1/responses --api responses --key sk-ob-... --stream
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1/images/generations --api images \\
        --key sk-ob-... --model bench-image --concurrency 8

Each of ``concurrency`` workers POSTs a small request in a loop (``--api chat``: an OpenAI chat
completion; ``--api messages``: an Anthropic Messages request; ``--api responses``: an OpenAI
Responses request; ``--api images``: an OpenAI image generation, never streamed), on a keep-alive
pool of ``concurrency`` connections, until ``requests`` requests were started or ``duration``
seconds have passed (whichever comes first; requests in flight then finish, each bounded by
``--timeout``). Warm-up requests (``--warmup``, run first at the same concurrency) open the
connections and warm the target's caches; they are not measured.

Per request: latency (send to last body byte), and for streams the time to first byte (chat: the
first body chunk after the headers; messages: the chunk that carries the first
``content_block_delta`` event, since a Messages stream opens with message_start,
content_block_start and ping before any text; responses: the chunk that carries the first
``response.output_text.delta``, after response.created, response.in_progress,
response.output_item.added and response.content_part.added). An error is a non-2xx status, an
exception or timeout, or a stream that did not end with ``data: [DONE]`` (chat) or did not carry
a ``message_stop`` (messages) or ``response.completed`` (responses) event; Openbili ends a stream
that failed mid-way with an error event and none of them. The summary has req/s (completed
requests / measured seconds), p50/p90/p99 of latency and TTFB in ms, and errors by kind with a
sample message each.

Keys: ``--auth bearer`` sends ``Authorization: Bearer KEY``, ``--auth x-api-key`` sends
``x-api-key: KEY`` (the Anthropic way); messages requests also carry ``anthropic-version``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

PAYLOAD = {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
# Anthropic Messages: the same prompt; max_tokens is required there and comes first by convention.
MESSAGES_PAYLOAD = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
# OpenAI Responses: the same prompt as a string input; `store` left out (OpenAI's default), as
# most clients send it.
RESPONSES_PAYLOAD = {"model": "bench-model", "input": "hello", "max_output_tokens": 16}
# OpenAI Images: one image, the default response_format (a URL from the gateway, b64_json from
# gpt-image itself).
IMAGES_PAYLOAD = {"model": "bench-image", "prompt": "hello", "n": 1, "size": "1024x1024"}
PAYLOADS = {"chat": PAYLOAD, "messages": MESSAGES_PAYLOAD, "responses": RESPONSES_PAYLOAD, "images": IMAGES_PAYLOAD}
ANTHROPIC_VERSION = "2023-06-01"
APIS = tuple(PAYLOADS)
AUTHS = ("bearer", "x-api-key")
# api -> (marker of the first text event: TTFB, marker of a complete stream), searched in the bytes
# of the stream; chat's TTFB is its first body chunk and it completes with `data: [DONE]`.
STREAM_MARKERS = {
    "messages": (b"content_block_delta", b"message_stop"),
    "responses": (b"response.output_text.delta", b"response.completed"),
}


def body_for(stream: bool, model: str = "bench-model", api: str = "chat") -> bytes:
    payload = dict(PAYLOADS[api], model=model)
    if stream and api != "images":
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


def headers_for(key: str, api: str = "chat", auth: str = "bearer") -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api == "messages":
        headers["anthropic-version"] = ANTHROPIC_VERSION
    if key:
        if auth == "x-api-key":
            headers["x-api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    starts: list[float] = field(default_factory=list)  # perf_counter at send, same order as latencies
    ttfbs: list[float] = field(default_factory=list)  # seconds, successful streams only
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    started: int = 0
    first_start: float = 0.0
    last_end: float = 0.0

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.error_samples.setdefault(kind, detail[:300])


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    stream: bool,
    timeout: aiohttp.ClientTimeout,
    samples: Samples | None,
    api: str = "chat",
) -> None:
    start = time.perf_counter()
    ttfb = None
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            if stream and resp.status < 300 and api in STREAM_MARKERS:
                # Events may be split across chunks: search each chunk together with the last
                # bytes of the previous one (the markers are shorter than the carried tail).
                first_marker, done_marker = STREAM_MARKERS[api]
                tail = b""
                done = False
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    window = tail + chunk
                    if ttfb is None and first_marker in window:
                        ttfb = time.perf_counter() - start
                    if not done and done_marker in window:
                        done = True
                    tail = window[-128:]
                end = time.perf_counter()
                ok = done and ttfb is not None
                detail = "" if ok else f"stream without {first_marker!r} or {done_marker!r}; last bytes {tail!r}"
            elif stream and resp.status < 300:
                tail = b""
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    if ttfb is None:
                        ttfb = time.perf_counter() - start
                    tail = (tail + chunk)[-64:]
                end = time.perf_counter()
                ok = b"[DONE]" in tail
                detail = "" if ok else f"stream ended without [DONE]; last bytes {tail!r}"
            else:
                data = await resp.read()
                end = time.perf_counter()
                ok = resp.status < 300
                detail = "" if ok else data.decode("utf-8", "replace")
            status = resp.status
    except TimeoutError:
        end, ok, status, detail = time.perf_counter(), False, "timeout", "request timed out"
    except aiohttp.ClientError as exc:
        end, ok, status, detail = time.perf_counter(), False, type(exc).__name__, str(exc)
    if samples is None:
        return
    samples.last_end = max(samples.last_end, end)
    if ok:
        samples.ok += 1
        samples.latencies.append(end - start)
        samples.starts.append(start)
        if ttfb is not None:
            samples.ttfbs.append(ttfb)
    elif isinstance(status, int) and status < 300:
        samples.error("stream_incomplete", detail)
    else:
        samples.error(str(status), detail)


async def run_load(
    url: str,
    *,
    key: str = "",
    concurrency: int = 1,
    requests: int = 1000,
    duration: float = 10.0,
    stream: bool = False,
    warmup: int = 20,
    timeout: float = 30.0,
    model: str = "bench-model",
    api: str = "chat",
    auth: str = "bearer",
    on_start: Callable[[], None] | None = None,
    stagger_ms: float = 0.0,
) -> dict[str, Any]:
    """Run one bounded load and return its summary (see module docstring).

    ``api`` is the client wire format (APIS: "chat", "messages", "responses", "images"), ``auth`` how the key is sent
    ("bearer" or "x-api-key"). ``key`` may be several keys separated by commas: worker i then
    sends key i mod len(keys). ``on_start`` is called (synchronously) after the warm-up, right
    before the measured phase.
    """
    if api not in APIS or auth not in AUTHS:
        raise ValueError(f"api must be one of {APIS} and auth one of {AUTHS}")
    keys = [k for k in key.split(",") if k] or [""]
    header_sets = [headers_for(k, api, auth) for k in keys]
    stream = stream and api != "images"
    body = body_for(stream, model, api)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        # Warm-up: same concurrency, not measured, bounded by count and by the request timeout.
        remaining = [warmup]

        async def warm_worker(i: int) -> None:
            headers = header_sets[i % len(header_sets)]
            # Connections open one by one while the earlier ones are busy, so a multi-worker
            # server's accept() is not won by one worker for all of them at once.
            await asyncio.sleep(i * stagger_ms / 1000)
            while remaining[0] > 0:
                remaining[0] -= 1
                await one_request(session, url, headers, body, stream, client_timeout, None, api)

        if warmup > 0:
            rounds = warmup // concurrency + 2 + int(concurrency * stagger_ms / 1000 / timeout)
            await asyncio.wait_for(asyncio.gather(*(warm_worker(i) for i in range(concurrency))), timeout * rounds)

        if on_start is not None:
            on_start()
        samples = Samples()
        deadline = time.perf_counter() + duration
        samples.first_start = time.perf_counter()

        async def worker(i: int) -> None:
            headers = header_sets[i % len(header_sets)]
            while samples.started < requests and time.perf_counter() < deadline:
                samples.started += 1
                await one_request(session, url, headers, body, stream, client_timeout, samples, api)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return summarize(samples, concurrency=concurrency, stream=stream) | {"api": api, "model": model}


def summarize(samples: Samples, *, concurrency: int, stream: bool) -> dict[str, Any]:
    elapsed = max(samples.last_end - samples.first_start, 1e-9)
    lat = sorted(samples.latencies)
    # The slowest 1 % (at most 30), with when they were sent: do slow requests come in bursts?
    slow_count = min(30, max(1, len(lat) // 100)) if lat else 0
    slowest = sorted(zip(samples.latencies, samples.starts, strict=True), reverse=True)[:slow_count]
    ttfb = sorted(samples.ttfbs)
    completed = samples.ok + sum(samples.errors.values())

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "concurrency": concurrency,
        "stream": stream,
        "completed": completed,
        "ok": samples.ok,
        "errors": sum(samples.errors.values()),
        "errors_by_kind": samples.errors,
        "error_samples": samples.error_samples,
        "seconds": round(elapsed, 3),
        "rps": round(completed / elapsed, 1),
        "latency_ms": {
            "p50": ms(percentile(lat, 50)),
            "p90": ms(percentile(lat, 90)),
            "p99": ms(percentile(lat, 99)),
            "mean": ms(sum(lat) / len(lat)) if lat else None,
            "max": ms(lat[-1]) if lat else None,
        },
        "slowest": [
            [round(start - samples.first_start, 3), ms(latency)]
            for latency, start in sorted(slowest, key=lambda x: x[1])
        ],
        "ttfb_ms": {
            "p50": ms(percentile(ttfb, 50)),
            "p90": ms(percentile(ttfb, 90)),
            "p99": ms(percentile(ttfb, 99)),
        }
        if stream
        else None,
    }


# --------------------------------------------------------------------------------------------------
# Mixed load: every /v1 entry point in fixed proportions (bench/run.py --soak)
# --------------------------------------------------------------------------------------------------

ERROR_CODE = re.compile(rb'"code": ?"([^"]{1,64})"')


def mix_body(item: dict[str, Any]) -> bytes | None:
    """The body of one mix item: kinds chat, messages, responses and images as body_for;
    count_tokens model + messages; models none."""
    if item["kind"] == "models":
        return None
    if item["kind"] == "count_tokens":
        return json.dumps({"model": item["model"], "messages": MESSAGES_PAYLOAD["messages"]}).encode()
    return body_for(item["stream"], item["model"], item["kind"])


def mix_headers(key: str, item: dict[str, Any]) -> dict[str, str]:
    """Anthropic's way (x-api-key, anthropic-version) for messages and count_tokens, else a Bearer."""
    if item["kind"] in ("messages", "count_tokens"):
        return headers_for(key, "messages", "x-api-key")
    return headers_for(key)


def mix_schedule(mix: list[dict[str, Any]], seed: int) -> list[int]:
    """One period of the mix: item i appears weight_i times, in a seeded random order."""
    slots = [i for i, item in enumerate(mix) for _ in range(item["weight"])]
    random.Random(seed).shuffle(slots)
    return slots


def error_code(data: bytes) -> str:
    match = ERROR_CODE.search(data)
    return match.group(1).decode("ascii", "replace") if match else "?"


async def mixed_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    kind: str,
    stream: bool,
    timeout: aiohttp.ClientTimeout,
) -> tuple[str, float, float | None]:
    """(outcome, latency s, TTFB s or None). Outcome: "ok"; "HTTP <status> <code>"; for a 2xx
    stream "stream error event <code>" (the gateway's error event, no terminator) or "stream
    incomplete"; "client timeout" or the aiohttp exception's name."""
    start = time.perf_counter()
    ttfb = None
    try:
        async with session.request(method, url, data=body, headers=headers, timeout=timeout) as resp:
            if stream and resp.status < 300:
                first_marker, done_marker = STREAM_MARKERS.get(kind, (b"data: ", b"data: [DONE]"))
                # Messages and Responses streams end a failure with an `error` event, chat with an
                # `{"error": ...}` chunk.
                error_marker = b'data: {"error"' if kind == "chat" else b"event: error"
                tail, done, error_event = b"", False, b""
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    window = tail + chunk
                    if ttfb is None and first_marker in window:
                        ttfb = time.perf_counter() - start
                    done = done or done_marker in window
                    if error_event:
                        error_event += chunk
                    elif error_marker in window:
                        error_event = window[window.index(error_marker) :]
                    tail = window[-128:]
                if done and not error_event:
                    outcome = "ok"
                elif error_event:
                    outcome = f"stream error event {error_code(error_event)}"
                else:
                    outcome = "stream incomplete"
            else:
                data = await resp.read()
                outcome = "ok" if resp.status < 300 else f"HTTP {resp.status} {error_code(data)}"
    except TimeoutError:
        return "client timeout", time.perf_counter() - start, None
    except aiohttp.ClientError as exc:
        return type(exc).__name__, time.perf_counter() - start, None
    return outcome, time.perf_counter() - start, ttfb


@dataclass
class MixStats:
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # every answered request, faults included
    ok_latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)

    def add(self, outcome: str, latency: float, ttfb: float | None, measured: bool) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if not measured:
            return
        self.latencies.append(latency)
        if outcome == "ok":
            self.ok_latencies.append(latency)
            if ttfb is not None:
                self.ttfbs.append(ttfb)


async def run_mix(
    base_url: str,
    *,
    keys: list[str],
    mix: list[dict[str, Any]],
    concurrency: int = 8,
    duration: float = 60.0,
    warmup_seconds: float = 10.0,
    timeout: float = 60.0,
    seed: int = 1,
    stagger_ms: float = 0.0,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every request takes the next slot of the mix's schedule (mix_schedule) and the next key.

    ``mix`` items: name, method, path, kind (chat, messages, responses, images, count_tokens, models), model,
    stream, weight. Request n uses item schedule[n % period] and key (n + n // period) % len(keys),
    so every item is sent with every key. The warm-up (``warmup_seconds``, same mix) is counted in
    what was sent (every request should leave a usage row) but not in the latencies. Per item and
    per key: requests sent and outcomes; per item: p50/p90/p99/max latency (all answered
    requests, and the "ok" ones), TTFB of the ok streams.
    """
    schedule = mix_schedule(mix, seed)
    period = len(schedule)
    bodies = [mix_body(item) for item in mix]
    headers = [[mix_headers(key, item) for key in keys] for item in mix]
    urls = [base_url + item["path"] for item in mix]
    phases = {phase: [MixStats() for _ in mix] for phase in ("warmup", "measured")}
    by_key = [0] * len(keys)
    counter = [0]
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker(i: int, phase: str, deadline: float) -> None:
            await asyncio.sleep(i * stagger_ms / 1000 if phase == "warmup" else 0)
            stats = phases[phase]
            while time.perf_counter() < deadline:
                n = counter[0]
                counter[0] += 1
                index, key = schedule[n % period], (n + n // period) % len(keys)
                item = mix[index]
                stats[index].sent += 1
                by_key[key] += 1
                outcome, latency, ttfb = await mixed_request(
                    session,
                    item["method"],
                    urls[index],
                    headers[index][key],
                    bodies[index],
                    item["kind"],
                    item["stream"],
                    client_timeout,
                )
                stats[index].add(outcome, latency, ttfb, measured=phase == "measured")

        deadline = time.perf_counter() + warmup_seconds
        await asyncio.gather(*(worker(i, "warmup", deadline) for i in range(concurrency)))
        if on_start is not None:
            on_start()
        began = time.perf_counter()
        await asyncio.gather(*(worker(i, "measured", began + duration) for i in range(concurrency)))
        seconds = time.perf_counter() - began

    def ms(values: list[float]) -> dict[str, float | None]:
        ordered = sorted(values)
        out = {f"p{q}": percentile(ordered, q) for q in (50, 90, 99)} | {"max": ordered[-1] if ordered else None}
        return {name: None if v is None else round(v * 1000, 3) for name, v in out.items()}

    def summary(stats: MixStats, measured: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"sent": stats.sent, "outcomes": dict(sorted(stats.outcomes.items()))}
        if measured:
            data |= {"latency_ms": ms(stats.latencies), "ok_latency_ms": ms(stats.ok_latencies)}
            data["ttfb_ms"] = ms(stats.ttfbs) if stats.ttfbs else None
        return data

    measured = sum(s.sent for s in phases["measured"])
    return {
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "warmup_seconds": warmup_seconds,
        "rps": round(measured / seconds, 1),
        "sent": counter[0],
        "measured_sent": measured,
        "sent_by_key": by_key,
        "items": {
            item["name"]: {
                "warmup": summary(phases["warmup"][i], False),
                "measured": summary(phases["measured"][i], True),
            }
            for i, item in enumerate(mix)
        },
    }


def process_main(conn, kwargs: dict[str, Any]) -> None:
    """Entry point of a driver child process (bench/run.py): the load runs alone in its process.

    After the warm-up it sends "warm" and waits for "go" (the parent takes its CPU baseline then),
    and finally sends the summary. Keeping the driver apart means the parent's psutil sampling
    (a few ms every 0.5 s) never stalls the event loop that times the requests.
    """
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    def on_start() -> None:
        conn.send("warm")
        if not conn.poll(60) or conn.recv() != "go":
            raise RuntimeError("the parent did not answer")

    run = run_mix if "mix" in kwargs else run_load
    try:
        conn.send(asyncio.run(run(**kwargs, on_start=on_start)))
    except Exception as exc:
        conn.send({"driver_error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/v1/chat/completions")
    parser.add_argument("--key", default="", help="sent as Authorization: Bearer KEY; KEY1,KEY2: round-robin")
    parser.add_argument("--api", choices=APIS, default="chat", help="client wire format of the requests")
    parser.add_argument("--auth", choices=AUTHS, default="bearer", help="how the key is sent")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000, help="at most this many measured requests")
    parser.add_argument("--duration", type=float, default=10.0, help="at most this many seconds (measured phase)")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument(
        "--model",
        default=None,
        help="default: bench-model (chat, responses), claude-sonnet-4-6 (messages), bench-image (images)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    host = URL(args.url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("only loopback targets (127.0.0.1, localhost, ::1) are allowed")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run_load(
            args.url,
            key=args.key,
            concurrency=args.concurrency,
            requests=args.requests,
            duration=args.duration,
            stream=args.stream,
            warmup=args.warmup,
            timeout=args.timeout,
            model=args.model or PAYLOADS[args.api]["model"],
            api=args.api,
            auth=args.auth,
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat, ttfb = result["latency_ms"], result["ttfb_ms"]
        print(
            f"{result['completed']} requests in {result['seconds']} s: {result['rps']} req/s, "
            f"latency p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} ms"
            + (f", TTFB p50 {ttfb['p50']} p90 {ttfb['p90']} p99 {ttfb['p99']} ms" if ttfb else "")
            + f", errors {result['errors']}"
        )
        for kind, count in result["errors_by_kind"].items():
            print(f"  {kind}: {count}  e.g. {result['error_samples'][kind]}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
