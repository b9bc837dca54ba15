"""Fixtures for the state-machine scenario tests: a fresh driven machine per test.

The driver itself lives in ``scenarios/driver.py`` (see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scenarios.driver import Driver

from statemachine.machine import JobStateMachine, MachineConfig


@pytest.fixture
def q() -> Iterator[Driver]:
    yield Driver()


@pytest.fixture
def small_q() -> Iterator[Driver]:
    """A machine whose max job size is 10 bytes."""
    yield Driver(JobStateMachine(MachineConfig(max_job_size=10)))
