"""The job API end to end, for real: a 3-node mTLS cluster, a proxy, and `beanraft worker`
processes that report to the cluster. Jobs go in with RunJob on one node and are watched and
stopped from the others; a worker is killed with -9 mid-job."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_harness import free_ports
from harness import Process, async_wait_until
from process_harness import ProcessCluster, issue_test_certificates

from api import joblet_pb2, joblet_pb2_grpc
from api.client import open_channel
from executor.cgroups import CGROUP_MOUNT, remove_dirs, v1_hierarchies

pytestmark = [pytest.mark.slow, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
Stubs = list[joblet_pb2_grpc.JobletServiceStub]


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root for the workers, and CI=true: run the suite as root")
        pytest.skip("needs root for the workers")


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("jobworkers") / "tls"
    return issue_test_certificates(directory)


class Stack:
    """The cluster, a proxy in front of it, and workers: real processes on loopback."""

    def __init__(self, root: Path, tls_dir: Path) -> None:
        self.root = root
        self.tls_dir = tls_dir
        self.cluster = ProcessCluster(root / "cluster", 3, tls_dir)
        self.proxy_port = free_ports(1)[0]
        self.cgroup_root = f"beanraft-test-{uuid.uuid4().hex[:8]}"
        self.procs: list[Process] = []
        self.workers: list[Process] = []

    @property
    def addresses(self) -> str:
        return ",".join(n.grpc_addr for n in self.cluster.nodes)

    def start(self) -> None:
        self.cluster.start_all()
        asyncio.run(self.cluster.wait_for_leader())
        argv = ["proxy", "--listen", f"127.0.0.1:{self.proxy_port}", "--cluster", self.addresses]
        proxy = self._spawn("proxy", [*argv, "--tls-dir", str(self.tls_dir)])
        proxy.wait_for_port(self.proxy_port)

    def start_worker(self, *extra: str, log_dir: Path | None = None) -> Process:
        name = f"worker-{len(self.workers)}"
        log_dir = log_dir or self.root / name
        argv = ["worker", "--beanstalkd", f"127.0.0.1:{self.proxy_port}", "--cluster"]
        argv += [self.addresses, "--tls-dir", str(self.tls_dir), "--log-dir", str(log_dir)]
        argv += ["--cgroup-root", self.cgroup_root, "--grace", "1", *extra]
        worker = self._spawn(name, argv)
        self.workers.append(worker)
        return worker

    def _spawn(self, name: str, argv: list[str]) -> Process:
        proc = Process([sys.executable, "-m", "beanraft", *argv], self.root / f"{name}.log", name)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace_s=30)
        self.cluster.stop_all()
        for mount in {*v1_hierarchies().values(), CGROUP_MOUNT}:
            path = os.path.join(mount, self.cgroup_root)
            if os.path.isdir(path):
                for worker_dir in os.listdir(path):
                    if os.path.isdir(os.path.join(path, worker_dir)):
                        remove_dirs([os.path.join(path, worker_dir)])
                remove_dirs([path])

    def on_nodes(self, scenario: Callable[[Stubs], Awaitable[None]]) -> None:
        async def main() -> None:
            nodes = self.cluster.nodes
            channels = [open_channel(n.grpc_addr, self.tls_dir, "admin") for n in nodes]
            try:
                await scenario([joblet_pb2_grpc.JobletServiceStub(ch) for ch in channels])
            finally:
                for channel in channels:
                    await channel.close()

        asyncio.run(main())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[Stack]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    built = Stack(tmp_path_factory.mktemp("stack"), tls_dir)
    try:
        built.start()
        built.start_worker("--concurrency", "2")
        yield built
    finally:
        built.stop()


async def wait_for(
    stubs: Stubs, job_id: str, statuses: tuple[str, ...], timeout_s: float = 60
) -> joblet_pb2.GetJobStatusRes:
    """The job's record once its status is one of ``statuses`` on every node."""
    deadline = time.monotonic() + timeout_s
    last = None
    for each in stubs:

        async def in_status(each: Any = each) -> joblet_pb2.GetJobStatusRes | None:
            try:
                got = await each.GetJobStatus(joblet_pb2.GetJobStatusReq(id=job_id), timeout=5)
            except grpc.aio.AioRpcError as exc:
                # a node (re)starting, or catching up with the entries that made the record
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise
                raise AssertionError(exc.code().name) from None  # the last thing seen
            assert got.status in statuses, got.status
            return got

        remaining = max(0.0, deadline - time.monotonic())
        last = await async_wait_until(in_status, remaining, f"job {job_id} in {statuses}")
    assert last is not None
    return last


def sh(script: str, **fields: object) -> joblet_pb2.RunJobReq:
    return joblet_pb2.RunJobReq(command="/bin/sh", args=["-c", script], **fields)  # type: ignore[arg-type]


def test_run_status_complete_with_its_exit_code_on_every_node(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        job = await nodes[0].RunJob(sh("echo hello"), timeout=10)
        done = await wait_for(nodes, job.id, ("COMPLETED", "FAILED"))
        assert (done.status, done.exitCode) == ("COMPLETED", 0)
        assert done.startTime and done.endTime
        assert done.details.attempt == 1 and done.details.worker_id
        assert done.details.result == "exited" and done.details.duration_ms > 0
        assert done.maxMemory == 1024  # the worker's default, reported when it started it

    stack.on_nodes(scenario)


def test_a_failing_job_is_failed_with_its_exit_code_and_an_oom_kill_says_so(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        failing = await nodes[1].RunJob(sh("exit 3"), timeout=10)
        hog = await nodes[2].RunJob(
            joblet_pb2.RunJobReq(
                command="/usr/bin/python3", args=["-c", "x = b'a' * (256 << 20)"], maxMemory=48
            ),
            timeout=10,
        )
        failed = await wait_for(nodes, failing.id, ("COMPLETED", "FAILED"))
        assert (failed.status, failed.exitCode) == ("FAILED", 3)
        oom = await wait_for(nodes, hog.id, ("COMPLETED", "FAILED"))
        assert oom.status == "FAILED" and oom.exitCode == -1
        assert oom.details.oom_killed and oom.details.result == "oom"

    stack.on_nodes(scenario)


def test_stop_of_a_running_job_from_another_node_stops_it_on_its_worker(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        job = await nodes[0].RunJob(sh("trap '' TERM; sleep 300"), timeout=10)
        await wait_for(nodes, job.id, ("RUNNING",))
        started = time.monotonic()
        stopped = await nodes[2].StopJob(joblet_pb2.StopJobReq(id=job.id), timeout=30)
        assert (stopped.status, stopped.exitCode) == ("STOPPED", -1)
        assert stopped.endTime
        assert time.monotonic() - started < 10  # SIGTERM ignored: the 1 s grace, then SIGKILL
        final = await wait_for(nodes, job.id, ("STOPPED",))
        assert final.details.result == "stopped"

    stack.on_nodes(scenario)


def test_a_queued_job_stopped_is_never_run(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        job = await nodes[1].RunJob(sh("echo ran", delay_s=2), timeout=10)
        stopped = await nodes[0].StopJob(joblet_pb2.StopJobReq(id=job.id), timeout=30)
        assert stopped.status == "STOPPED"
        await asyncio.sleep(3)  # past the delay: a job still queued would have run by now
        final = await wait_for(nodes, job.id, ("STOPPED",))
        assert final.details.attempt == 0 and final.startTime == ""

    stack.on_nodes(scenario)


def test_a_worker_killed_mid_job_leaves_a_lost_attempt_and_the_next_worker_finishes_it(
    stack: Stack,
) -> None:
    victim = stack.start_worker("--tubes", "jobapi-kill")

    async def scenario(nodes: Stubs) -> None:
        job = await nodes[0].RunJob(
            sh("sleep 2; echo done", tube="jobapi-kill", ttr_s=2), timeout=10
        )
        running = await wait_for(nodes, job.id, ("RUNNING",))
        first_worker = running.details.worker_id
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        stack.start_worker("--tubes", "jobapi-kill")
        done = await wait_for(nodes, job.id, ("COMPLETED", "FAILED"), timeout_s=90)
        assert done.status == "COMPLETED"
        assert done.details.lost_attempts == 1 and done.details.attempt >= 2
        assert done.details.worker_id != first_worker

    stack.on_nodes(scenario)


def test_status_of_a_job_put_by_a_plain_beanstalkd_client_appears_when_a_worker_runs_it(
    stack: Stack,
) -> None:
    import json

    import greenstalk

    with greenstalk.Client(("127.0.0.1", stack.proxy_port)) as client:
        job_id = client.put(json.dumps({"command": "/bin/true"}))

    async def scenario(nodes: Stubs) -> None:
        async def completed() -> joblet_pb2.GetJobStatusRes | None:
            try:
                return await wait_for(nodes, str(job_id), ("COMPLETED",))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return None

        done = await async_wait_until(completed, 60, f"job {job_id} completed", poll_s=0.1)
        assert done.command == "/bin/true"

    stack.on_nodes(scenario)


async def read_logs(
    stub: joblet_pb2_grpc.JobletServiceStub, job_id: str, offset: int = 0, follow: bool = True
) -> bytes:
    request = joblet_pb2.GetJobLogsReq(id=job_id, offset=offset, no_follow=not follow)
    data = b""
    async for chunk in stub.GetJobLogs(request, timeout=60):
        assert chunk.offset == offset + len(data)
        data += chunk.payload
    return data


COUNT_SCRIPT = "for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done; echo to-stderr >&2"
EXPECTED = b"".join(f"line-{i}\n".encode() for i in range(1, 6)) + b"to-stderr\n"


def test_logs_from_any_node_follow_live_and_end_when_the_job_ends(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        job = await nodes[0].RunJob(sh(COUNT_SCRIPT), timeout=10)
        followers = [read_logs(nodes[i], job.id) for i in (1, 2)]
        slow = nodes[0].GetJobLogs(joblet_pb2.GetJobLogsReq(id=job.id), timeout=60)
        outputs = await asyncio.gather(*followers)
        assert outputs == [EXPECTED, EXPECTED]
        done = await wait_for(nodes, job.id, ("COMPLETED",))
        assert done.details.duration_ms < 5000  # the slow reader below did not slow the job
        slow_data = b""
        async for chunk in slow:  # a reader that only starts reading now still gets it all
            await asyncio.sleep(0.05)
            slow_data += chunk.payload
        assert slow_data == EXPECTED

    stack.on_nodes(scenario)


def test_a_reader_that_reconnects_at_its_offset_gets_every_byte_once(stack: Stack) -> None:
    async def scenario(nodes: Stubs) -> None:
        job = await nodes[1].RunJob(sh(COUNT_SCRIPT), timeout=10)
        call = nodes[2].GetJobLogs(joblet_pb2.GetJobLogsReq(id=job.id), timeout=60)
        first = b""
        async for chunk in call:
            first += chunk.payload
            if len(first) >= 7:
                break
        call.cancel()
        rest = await read_logs(nodes[0], job.id, offset=len(first))
        assert first + rest == EXPECTED

    stack.on_nodes(scenario)


def test_logs_of_a_finished_job_are_read_after_its_worker_restarted_and_an_absent_worker_is_named(
    stack: Stack,
) -> None:
    port = free_ports(1)[0]
    worker = stack.start_worker("--tubes", "jobapi-logs", "--log-listen", f"127.0.0.1:{port}")
    log_dir = stack.root / f"worker-{len(stack.workers) - 1}"

    async def scenario(nodes: Stubs) -> None:
        job = await nodes[0].RunJob(sh("echo kept", tube="jobapi-logs"), timeout=10)
        await wait_for(nodes, job.id, ("COMPLETED",))
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_logs(nodes[1], job.id, follow=False)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"127.0.0.1:{port}" in caught.value.details()
        # Restarted on the same log directory and log address, it serves what the first kept.
        stack.start_worker(
            "--tubes", "jobapi-logs", "--log-listen", f"127.0.0.1:{port}", log_dir=log_dir
        )

        async def logs_served() -> bool:
            try:
                return await read_logs(nodes[2], job.id, follow=False) == b"kept\n"
            except grpc.aio.AioRpcError:  # the restarted worker is still starting
                return False

        await async_wait_until(logs_served, 30, "the restarted worker to serve the logs", 0.2)

    stack.on_nodes(scenario)


def test_the_leader_killed_while_jobs_run_loses_no_record_and_every_node_converges(
    stack: Stack,
) -> None:
    async def scenario(nodes: Stubs) -> None:
        ids = []
        for i in range(6):
            job = await nodes[i % 3].RunJob(
                sh(f"sleep 0.5; echo job-{i}", request_id=f"leader-kill-{i}"), timeout=10
            )
            ids.append(job.id)
        leader = await stack.cluster.wait_for_leader()
        leader.kill()
        try:
            survivors = [
                stub for node, stub in zip(stack.cluster.nodes, nodes, strict=True) if node.running
            ]
            for job_id in ids:
                done = await wait_for(survivors, job_id, ("COMPLETED", "FAILED"), timeout_s=90)
                assert done.status == "COMPLETED", (job_id, done.details)
        finally:
            leader.restart()
        await stack.cluster.wait_for_leader()
        for job_id in ids:  # the restarted node caught up: the same records everywhere
            await wait_for(nodes, job_id, ("COMPLETED",), timeout_s=60)

    stack.on_nodes(scenario)
