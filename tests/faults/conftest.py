"""Fixtures of the fault tests: one private stack for the package (harness.Stack), everything up
and a fresh account for each test."""

from __future__ import annotations

import pytest

from tests.faults.harness import Account, Stack, running_stack


@pytest.fixture(scope="package")
def stack():
    """Started once for this package, stopped after its last test (not at the end of a whole run)."""
    with running_stack() as started:
        yield started


@pytest.fixture
def faults(stack: Stack) -> Stack:
    """The stack with everything up and the upstream answering normally (Stack.ready)."""
    return stack.ready()


@pytest.fixture
def account(faults: Stack) -> Account:
    """An account of its own for the test ($1000, one key): its rows are exactly the test's requests."""
    return faults.account()
