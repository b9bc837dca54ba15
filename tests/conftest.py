"""Settings for the whole test session, applied before any test module imports grpc or ours.

The executor tests fork isolated jobs from this very process (as a worker does), after the
cluster tests have used gRPC in it. A gRPC stream that a test left open keeps gRPC's poller
busy, and gRPC's fork handlers then crash the forked job (SIGABRT in ev_epoll1 ``Wakeup``).
A real worker never loads gRPC (it speaks beanstalkd's protocol), so only this shared test
process needs gRPC's fork support off.

The hot pure modules may have native builds beside their sources (beanraft/native.py). A
build older than a source would test old code, so the session refuses to start on one;
``BEANRAFT_PURE=1`` tests the interpreted sources instead (in this process: the nodes and
proxies that tests start run whatever is built).

tests/harness is the harness every test directory shares (ports, process start and stop, logs,
waiting on conditions). It imports as ``harness`` because pytest's default "prepend" import
mode puts this file's directory, tests/, first on sys.path before importing it (tests/ has no
__init__.py), and every test run loads this conftest first. Its hooks, imported below, attach
the tail of each log a failing test's processes wrote to that test's report.
"""

import os
import tempfile

import pytest
from harness.plugin import pytest_runtest_makereport, pytest_runtest_protocol

from beanraft import native

__all__ = ["pytest_runtest_makereport", "pytest_runtest_protocol"]

# tests/harness/test_logs_on_failure.py runs an inner pytest session to see its report.
pytest_plugins = ["pytester"]

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# `beanraft up` records its cluster for the clients in the user's config directory: tests keep
# theirs in a directory of their own, never in the home of whoever runs them.
os.environ["BEANRAFT_CONFIG"] = os.path.join(
    tempfile.mkdtemp(prefix="beanraft-test-"), "client.json"
)

if os.environ.get("BEANRAFT_PURE") == "1":
    native.prefer_sources()


def pytest_configure(config: pytest.Config) -> None:
    if native.stale():
        raise pytest.UsageError(f"native build: {native.status()}")


def pytest_report_header(config: pytest.Config) -> str:
    mode = "interpreted (BEANRAFT_PURE=1)" if native.prefer_sources_active() else native.status()
    return f"beanraft modules: {mode}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite-scripts",
        action="store_true",
        help="write the state machine's replies into tests/statemachine/scenarios/*.txt",
    )
