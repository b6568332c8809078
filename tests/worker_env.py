"""Each pytest-xdist worker on a Redis database of its own: a plugin that must load before Django's
settings do (scripts/test passes `-p tests.worker_env`; tests/conftest.py refuses to run in a
worker without it, since conftest files are imported after pytest-django has read the settings).

Worker `gwN` rewrites REDIS_URL (and CELERY_BROKER_URL when it names the same Redis) from
database `b` to `b - N`: with the default redis://127.0.0.1:6379/15, gw0 uses 15 and gw1 14;
keep the databases below the base free for the suite. The process's own settings and every
process it starts (second gateways, Celery workers, manage.py) inherit the rewritten variable.
Rate-limit counters, leases, the usage outbox and the Celery queues of one worker are thus never
seen, or flushed, by the other. The rest is per worker already: pytest-django's test database
`test_<name>_gwN` (also the scope of advisory locks and of LISTEN/NOTIFY), ports picked by the
OS, the fault tests' private servers, pytest's temporary directories.
"""

from __future__ import annotations

import os
import re
import sys

APPLIED: str | None = None  # the worker's Redis URL once rewritten


def _rewrite(url: str, worker: int) -> str:
    match = re.fullmatch(r"(redis://[^/]*)(?:/(\d+))?", url)
    if not match:
        raise RuntimeError(f"REDIS_URL {url!r}: expected redis://host:port/<db> to give each xdist worker its own db")
    db = int(match.group(2) or 0) - worker
    if db < 0:
        raise RuntimeError(f"REDIS_URL {url!r}: no Redis database left for xdist worker gw{worker} (base minus index)")
    return f"{match.group(1)}/{db}"


def _apply() -> None:
    global APPLIED
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not os.environ.get("REDIS_URL"):
        return
    conf = sys.modules.get("django.conf")
    if conf is not None and conf.settings.configured:
        raise RuntimeError(
            "an xdist worker needs a Redis database of its own, set before Django reads its settings:"
            " run scripts/test, or pass -p tests.worker_env to pytest"
        )
    base = os.environ["REDIS_URL"]
    url = _rewrite(base, int(worker[2:]))
    os.environ["REDIS_URL"] = url
    if os.environ.get("CELERY_BROKER_URL") == base:
        os.environ["CELERY_BROKER_URL"] = url
    APPLIED = url


_apply()


def pytest_collection_modifyitems(config, items) -> None:
    """The fault tests start a private PostgreSQL, Redis and gateway once for their package
    (tests/faults/conftest.py): under xdist they all go to one worker (`--dist loadgroup`), which
    starts that stack once, not once per worker."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    import pytest

    for item in items:
        if item.nodeid.startswith("tests/faults/"):
            item.add_marker(pytest.mark.xdist_group("faults"))
