"""Fixtures for the fault tests: root, iptables, and a cluster of nodes as their own users."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .cluster import NemesisCluster


def _require_root_and_iptables() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (users, iptables, mounts)")
    if shutil.which("iptables") is None:
        missing.append("iptables (apt-get install iptables)")
    if not missing:
        return
    reason = f"the fault tests need {' and '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true: CI must run them")
    pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def nemesis_cluster(request: pytest.FixtureRequest) -> Iterator[NemesisCluster]:
    """Three nodes (users brnem1..3, each on its own tmpfs) and two proxies, stopped and
    cleaned up (rules, mounts, permissions) afterwards; on failure the logs are kept."""
    _require_root_and_iptables()
    cluster = NemesisCluster(size=3, proxies=2)
    failed = True
    try:
        cluster.start()
        yield cluster
        failed = request.node.stash.get(_FAILED, False)
    finally:
        cluster.close(keep=failed)
        if failed:
            print(f"fault test: logs and data kept in {cluster.root}")
