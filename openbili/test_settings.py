"""Settings for the test suite and the type checker: the production settings, on the public
development SECRET_KEY by explicit opt-out (openbili/settings.py refuses to start without a key)."""

import os

os.environ.setdefault("OPENBILI_INSECURE_DEV_SECRET", "1")

from openbili.settings import *  # noqa: F403
