"""The benchmark's fake upstream: ``openbili.fake_upstream`` on uvloop, request recording off.

    .venv/bin/python bench/upstream.py --port 18300 [--latency-ms 0] [--chunks 8] [--chunk-delay-ms 0]

Same OpenAI chat format (stream and non-stream), scenarios and token formula as the fake upstream
the tests use (openbili/fake_upstream/server.py); this wrapper only runs it on uvloop when that is
installed (it comes with uvicorn[standard]) and forces ``--no-record``, so the upstream spends as
little CPU per request as possible and every target is measured against the same cheap upstream.
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
