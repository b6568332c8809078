"""Settings for the test suite and the type checker: the production settings, on the public
development SECRET_KEY by explicit opt-out (openbili/settings.py refuses to start without a key)."""

import os
import sys
import tempfile

from django.conf import global_settings

os.environ.setdefault("OPENBILI_INSECURE_DEV_SECRET", "1")

from openbili.settings import *  # noqa: F403

# The read replica's alias exists (a mirror of the test database), off unless a test turns
# OPENBILI_REPLICA_READS on (tests/ops/test_replica.py): the suite's other tests may not query it.
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}  # noqa: F405
OPENBILI_REPLICA_READS = False

# Tests make thousands of users: hash their passwords cheaply (PBKDF2's million rounds cost about a
# second a user on a slow machine). Production keeps Django's default hashers (settings.py).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *global_settings.PASSWORD_HASHERS]

# Under pytest, every record also goes, as production formats it, to a file of this process in the
# run's log directory, which the suite's secret scan reads at the end (tests/log_scan.py). Here,
# not in a fixture: every django.setup() (the ASGI app makes one) reapplies LOGGING.
if "pytest" in sys.modules:
    if "OPENBILI_TEST_LOG_DIR" not in os.environ:  # the controller's; xdist workers inherit it
        os.environ["OPENBILI_TEST_LOG_DIR"] = tempfile.mkdtemp(prefix="openbili-suite-logs-")
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    LOGGING["handlers"]["suite"] = {  # noqa: F405
        "class": "logging.FileHandler",
        "filename": os.path.join(os.environ["OPENBILI_TEST_LOG_DIR"], f"{_worker}-{os.getpid()}.jsonl"),
        "formatter": "json",
        "level": "INFO",
        "delay": True,
    }
    LOGGING["root"]["handlers"] = [*LOGGING["root"]["handlers"], "suite"]  # noqa: F405
    for _logger in ("uvicorn", "uvicorn.error"):
        LOGGING["loggers"][_logger] = {**LOGGING["loggers"][_logger], "handlers": ["console", "suite"]}  # noqa: F405
