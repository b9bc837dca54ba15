"""The pytest hooks that show the logs of a failing test's processes (tests/conftest.py
imports them; an inner pytester session loads this module with ``-p harness.plugin``)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from . import logs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    logs.begin_test(item.nodeid)
    try:
        return (yield)
    finally:
        logs.begin_test(None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure in setup, call or teardown carries the tail of every log its test's
    processes wrote (and of the still-running processes of wider fixtures)."""
    report = yield
    if report.failed:
        for log in logs.for_test(item.nodeid):
            title = f"log of {log.label} ({log.path}), last {logs.TAIL_LINES} lines"
            report.sections.append((title, logs.tail(log.path)))
    return report
