"""Settings for the test suite and the type checker: the production settings, on the public
development SECRET_KEY by explicit opt-out (openbili/settings.py refuses to start without a key)."""

import os

from django.conf import global_settings

os.environ.setdefault("OPENBILI_INSECURE_DEV_SECRET", "1")

from openbili.settings import *  # noqa: F403

# Tests make thousands of users: hash their passwords cheaply (PBKDF2's million rounds cost about a
# second a user on a slow machine). Production keeps Django's default hashers (settings.py).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *global_settings.PASSWORD_HASHERS]
