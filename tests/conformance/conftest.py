"""Targets for the conformance suite: the same conversations against every server.

``target`` is parametrized over:
- ``beanstalkd``: the reference, /usr/bin/beanstalkd 1.12, on a free port;
- ``standalone``: a real ``python -m beanraft proxy --standalone`` subprocess;
- ``cluster``: ``beanraft proxy --cluster`` in front of three real ``beanraft node`` processes;
- ``node``: three ``beanraft node --beanstalkd-listen`` processes, the client on the first's
  listener (the direct path: no proxy, no gRPC hop on the leader).

Servers are shared by the tests of a session (each test works in its own tubes and reads job
ids from the replies) unless a test is marked ``fresh`` (it needs ids from 1 and counters at 0)
or needs server flags (``max_job_size``): those get a process of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .targets import STARTERS, Server, cluster_missing


class Servers:
    """Shared servers per kind, started on first use and stopped at the end of the session."""

    def __init__(self) -> None:
        self._shared: dict[str, Server] = {}

    def shared(self, kind: str) -> Server:
        if kind not in self._shared:
            self._shared[kind] = STARTERS[kind]()
        server = self._shared[kind]
        if server.process.poll() is not None:
            raise RuntimeError(f"the shared {kind} server died (exit {server.process.returncode})")
        return server

    def stop(self) -> None:
        for server in self._shared.values():
            server.stop()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    pool = Servers()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(params=["beanstalkd", "standalone", "cluster", "node"])
def target(request: pytest.FixtureRequest, servers: Servers) -> Iterator[Server]:
    """A server to talk to: shared, or a fresh one for tests marked ``fresh`` or ``config``."""
    kind = request.param
    if kind in ("cluster", "node") and (reason := cluster_missing()):
        pytest.skip(reason)
    fresh = request.node.get_closest_marker("fresh")
    config = request.node.get_closest_marker("config")
    if fresh is None and config is None:
        yield servers.shared(kind)
        return
    kwargs = dict(config.kwargs) if config is not None else {}
    server = STARTERS[kind](**kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tube() -> str:
    """A tube name of this test's own, so tests can share a server."""
    return f"t{uuid.uuid4().hex[:12]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fresh: needs a new server (ids from 1, counters at 0)")
    config.addinivalue_line("markers", "config(**kw): needs a server started with options")
