"""Fixtures for the fake upstream's own tests (a shared copy will move to tests/conftest.py)."""

from __future__ import annotations

import pytest

from openbili.fake_upstream import DEFAULT_CHUNKS, FakeUpstream


@pytest.fixture(scope="session")
def _fake_upstream_server():
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_upstream(_fake_upstream_server):
    """A running fake upstream (one per session), reset to defaults before each test."""
    fake = _fake_upstream_server
    fake.reset()
    fake.configure(latency_ms=0, chunks=DEFAULT_CHUNKS, chunk_delay_ms=0)
    yield fake
    fake.reset()
