"""``python -m openbili.fake_upstream --host 127.0.0.1 --port 8181 [--latency-ms N] [--chunks N]``"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from openbili.fake_upstream.server import DEFAULT_CHUNKS, serve


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m openbili.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay before each response's first byte")
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="content pieces per reply")
    parser.add_argument("--chunk-delay-ms", type=float, default=0, help="delay between stream chunks")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--no-record", action="store_true", help="do not record requests (benchmarks)")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    fake = await serve(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        api_key=args.api_key,
        record=not args.no_record,
    )
    print(f"Fake upstream listening on {fake.url}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await fake.astop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    main()
