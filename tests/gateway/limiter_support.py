"""Stand-in keys and window timing for the limiter's unit tests (two Limiter instances play two
gateway processes against the real Redis)."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

from usage.gateway import limits

_KEY_IDS = itertools.count(10**6)


def a_key(*, rpm=None, tpm=None, account_rpm=None, account_tpm=None):
    """A fresh key (and account) id per test, so counters of earlier runs never interfere."""
    ident = next(_KEY_IDS) + int(time.time() * 1000) % 10**6 * 10**7
    return SimpleNamespace(
        id=ident,
        account_id=ident,
        rpm_limit=rpm,
        tpm_limit=tpm,
        account_rpm_limit=account_rpm,
        account_tpm_limit=account_tpm,
    )


def fresh_window() -> None:
    """Start a test well inside a one-minute window, so its counters never roll over mid-test."""
    into = time.time() % limits.WINDOW
    if into > limits.WINDOW - 8:
        time.sleep(limits.WINDOW - into + 0.05)
