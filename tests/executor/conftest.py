"""Fixtures for the executor tests: root gating, a real beanstalkd, a cgroup backend, a job
runner and a real worker process. Everything started here is stopped here."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from harness import Process, ports, wait_until

from cluster.jobspec import spec_from_dict
from executor import runner, seccomp, uids
from executor.cgroup_backends import CgroupBackend, open_backend
from executor.cgroups import CGROUP_MOUNT, remove_dirs, v1_hierarchies
from executor.plan import Plan, WorkerPolicy, make_plan
from executor.worker import host_layout

REPO = Path(__file__).resolve().parents[2]
BEANSTALKD = "/usr/bin/beanstalkd"


def require_root() -> None:
    """Skip when not root, but fail under CI=true: CI must run the isolation tests."""
    if os.geteuid() == 0:
        return
    reason = "needs root for namespaces and cgroups"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true: run the suite as root")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _root_for_marked(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") is not None:
        require_root()


def free_port() -> int:
    """A port held for this session (harness.ports: no client can take it before the server
    binds it)."""
    return ports.port()


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Until something accepts on 127.0.0.1:``port``."""

    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    wait_until(accepts, timeout_s, f"something to listen on 127.0.0.1:{port}")


@pytest.fixture
def beanstalkd(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real beanstalkd on a held 127.0.0.1 port."""
    if not os.path.exists(BEANSTALKD):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{BEANSTALKD} is missing")
        pytest.skip(f"{BEANSTALKD} is missing")
    port = free_port()
    argv = [BEANSTALKD, "-l", "127.0.0.1", "-p", str(port)]
    proc = Process(argv, tmp_path / "beanstalkd.log", "beanstalkd", cwd=None)
    try:
        proc.wait_for_port(port, 10)
        yield ("127.0.0.1", port)
    finally:
        proc.kill()
        ports.release([port])


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    """A unique cgroup subtree name, removed (leaf dirs must be gone already) afterwards."""
    name = f"beanraft-test-{uuid.uuid4().hex[:8]}"
    yield name
    for mount in set(v1_hierarchies().values()) | {CGROUP_MOUNT}:
        path = os.path.join(mount, name)
        if os.path.isdir(path):
            leftovers = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
            assert not leftovers, f"cgroups left behind in {path}: {leftovers}"
            remove_dirs([path])  # v1 may answer EBUSY for a moment after a child's rmdir


@pytest.fixture
def backend(cgroup_root: str) -> Iterator[CgroupBackend]:
    require_root()
    be = open_backend(cgroup_root)
    try:
        yield be
    finally:
        be.close()


@dataclass
class JobRun:
    result: runner.RunResult
    stdout: str
    stderr: str


_FILTER: list[object] = []
# Job ids are unique across every JobRunner of the session: two runners may share a backend, and
# the id names the job's cgroup directory and log files.
_JOB_IDS = itertools.count(1)


def seccomp_filter() -> object:
    """The worker's seccomp filter, built once per test session as a worker builds it once."""
    if not _FILTER:
        _FILTER.append(seccomp.prepare(seccomp.build_filter()))
    return _FILTER[0]


class JobRunner:
    """Runs one spec through the real runner (no beanstalkd) and returns what happened, as a
    worker slot would: with a uid of its own (leased from the worker range) and the filter."""

    def __init__(
        self, backend: CgroupBackend, log_dir: Path, allow_root: bool = False, **policy: Any
    ) -> None:
        self.backend = backend
        self.log_dir = log_dir
        self.policy = WorkerPolicy(allow_root=allow_root, **policy)
        self.count = 0
        self.lease = uids.lease(*uids.DEFAULT_UID_RANGE)
        self.uid = self.lease.uid

    def start(self, raw: dict[str, Any]) -> runner.RunningJob:
        self.count = next(_JOB_IDS)
        spec = spec_from_dict(raw)
        return self.start_plan(make_plan(spec, self.count, 1, host_layout(), self.policy, self.uid))

    def start_plan(self, plan: Plan, paths: tuple[Path, Path] | None = None) -> runner.RunningJob:
        out, err = paths or self.paths()
        filt = seccomp_filter() if plan.seccomp else None
        return runner.start(plan, self.backend, str(out), str(err), filt)

    def stdout_now(self, job: runner.RunningJob) -> str:
        """What the running job has printed so far (copied from its pipe, as the worker's wait
        loop would)."""
        for output in job.outputs:
            output.pump()
        return self.paths()[0].read_text()

    def paths(self) -> tuple[Path, Path]:
        return self.log_dir / f"{self.count}.out", self.log_dir / f"{self.count}.err"

    def finish(
        self, job: runner.RunningJob, should_stop: Any = lambda: False, grace_ms: int = 2000
    ) -> JobRun:
        result = runner.wait(job, lambda: None, 100, should_stop, grace_ms=grace_ms)
        out, err = self.paths()
        return JobRun(result, out.read_text(), err.read_text() if err.exists() else "")

    def run(self, raw: dict[str, Any]) -> JobRun:
        return self.finish(self.start(raw))


@pytest.fixture
def job_runner_for(tmp_path: Path) -> Iterator[Any]:
    """A JobRunner on a given backend and policy (a v2 hierarchy on a v1 host, other limits)."""
    made: list[JobRunner] = []

    def make(backend: CgroupBackend, allow_root: bool = False, **policy: Any) -> JobRunner:
        made.append(JobRunner(backend, tmp_path, allow_root, **policy))
        return made[-1]

    yield make
    for job_runner in made:
        job_runner.lease.release()


@pytest.fixture
def jobs(backend: CgroupBackend, tmp_path: Path) -> Iterator[JobRunner]:
    job_runner = JobRunner(backend, tmp_path)
    yield job_runner
    job_runner.lease.release()


class WorkerProcess:
    """`beanraft worker` as a real child process."""

    def __init__(
        self, address: tuple[str, int] | str, log_dir: Path, cgroup_root: str, *extra: str
    ) -> None:
        self.log_dir = log_dir
        self.output = log_dir / f"worker-{uuid.uuid4().hex[:6]}.out"
        cmd = [
            sys.executable,
            "-m",
            "beanraft",
            "worker",
            "--beanstalkd",
            address if isinstance(address, str) else f"{address[0]}:{address[1]}",
            "--log-dir",
            str(log_dir),
            "--cgroup-root",
            cgroup_root,
            *extra,
        ]
        env = {**os.environ, "BEANRAFT_WORKER_SECRET": "must-not-leak"}
        self.proc = Process(cmd, self.output, self.output.stem, cwd=REPO, env=env)

    def stop(self) -> int:
        return self.proc.stop(grace_s=30)

    def log(self) -> str:
        return self.output.read_text()


@pytest.fixture
def free_port_and_wait() -> tuple[Any, Any]:
    return free_port, wait_for_port


@pytest.fixture
def worker_for(tmp_path: Path, cgroup_root: str) -> Iterator[Any]:
    """Start `beanraft worker` processes against any beanstalkd-protocol endpoint."""
    require_root()
    workers: list[WorkerProcess] = []

    def start(address: tuple[str, int] | str, *extra: str) -> WorkerProcess:
        log_dir = tmp_path / f"logs-{len(workers)}"
        log_dir.mkdir()
        worker = WorkerProcess(address, log_dir, cgroup_root, *extra)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def start_worker(beanstalkd: tuple[str, int], tmp_path: Path, cgroup_root: str) -> Iterator[Any]:
    require_root()
    workers: list[WorkerProcess] = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def start(*extra: str) -> WorkerProcess:
        worker = WorkerProcess(beanstalkd, log_dir, cgroup_root, *extra)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(name="wait_until")
def _wait_until_fixture() -> Any:
    """harness.wait_until, polling every 50 ms: many predicates here open a connection."""
    return functools.partial(wait_until, poll_s=0.05)


@pytest.fixture(name="job_state")
def _job_state_fixture() -> Any:
    return job_state


def job_state(address: tuple[str, int], job_id: int) -> str | None:
    with greenstalk.Client(address) as client:
        try:
            return str(client.stats_job(job_id)["state"])
        except greenstalk.NotFoundError:
            return None
