"""The job API (joblet.JobletService) on a real 3-node cluster with mTLS: run, status from
every node, list, stop, roles and joblet's errors. Workers are not involved here: a job's
worker reports are applied as a worker applies them (over Apply, with the worker's
certificate); tests/executor/test_job_api_workers.py runs real workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import async_wait_until
from process_harness import ProcessCluster, issue_test_certificates

from api import joblet_pb2, joblet_pb2_grpc
from api.client import RemoteQueue, open_channel
from statemachine import commands as c
from statemachine import replies as r
from statemachine.records import AttemptResult, JobSummary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("joblet") / "tls"
    return issue_test_certificates(directory)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path_factory.mktemp("jobcluster"), 3, tls_dir)
    procs.start_all()
    try:
        asyncio.run(procs.wait_for_leader())
        yield procs
    finally:
        procs.stop_all()


Stubs = list[joblet_pb2_grpc.JobletServiceStub]


def on_cluster(
    cluster: ProcessCluster, scenario: Callable[..., Awaitable[None]], role: str = "admin"
) -> None:
    """Run ``scenario(stubs, worker_queue)`` in a fresh event loop: one joblet stub per node
    with ``role``'s certificate, and a RemoteQueue with the worker's; all closed afterwards."""

    async def main() -> None:
        channels = [open_channel(n.grpc_addr, cluster.tls_dir, role) for n in cluster.nodes]
        queue = RemoteQueue([n.grpc_addr for n in cluster.nodes], cluster.tls_dir, "worker")
        try:
            await scenario([joblet_pb2_grpc.JobletServiceStub(ch) for ch in channels], queue)
        finally:
            await queue.close()
            for channel in channels:
                await channel.close()

    asyncio.run(main())


async def eventually_on_every_node(stubs: Stubs, job_id: str, status: str) -> None:
    """Every node shows ``status`` for the job within a second (a follower applies the entry
    that changed it a little after the leader)."""
    await eventually_within(stubs, job_id, status, 1.0)


async def eventually_within(stubs: Stubs, job_id: str, status: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for each in stubs:

        async def shows_status(each: Any = each) -> bool:
            try:
                got = await each.GetJobStatus(joblet_pb2.GetJobStatusReq(id=job_id), timeout=5)
                seen = got.status
            except grpc.aio.AioRpcError as exc:
                seen = exc.code().name
            assert seen == status, (seen, status)
            return True

        remaining = max(0.0, deadline - time.monotonic())
        await async_wait_until(shows_status, remaining, f"job {job_id} {status}", poll_s=0.01)


def test_run_job_answers_with_the_record_and_every_node_shows_it(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        request = joblet_pb2.RunJobReq(
            command="python3", args=["-c", "print(1)"], maxCPU=50, maxMemory=256, tube="jobapi-a"
        )
        job = await admin[1].RunJob(request, timeout=10)
        assert job.status == "INITIALIZING"
        assert (job.command, list(job.args), job.maxCPU, job.maxMemory) == (
            "python3",
            ["-c", "print(1)"],
            50,
            256,
        )
        assert job.details.queue_state == "ready" and job.details.tube == "jobapi-a"
        assert job.startTime == "" and job.endTime == "" and job.exitCode == 0
        assert job.details.created_time.endswith("Z")
        await eventually_on_every_node(admin, job.id, "INITIALIZING")

    on_cluster(cluster, scenario)


def test_a_job_reported_by_its_worker_runs_and_completes_on_every_node(
    cluster: ProcessCluster,
) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        job = await admin[0].RunJob(
            joblet_pb2.RunJobReq(command="true", tube="jobapi-b"), timeout=10
        )
        job_id = int(job.id)
        await worker_queue.apply(c.Connect("w-client", "w-proxy"))
        await worker_queue.apply(c.Watch("w-client", "jobapi-b"))
        reserved = await worker_queue.apply(c.ReserveJob("w-client", job_id))
        assert isinstance(reserved, r.Reserved)
        summary = JobSummary("true")
        started = await worker_queue.apply(
            c.ReportJobStart(job_id, 1, "host:1", "127.0.0.1:9", summary, "jobapi-b", 1024)
        )
        assert started == r.JobStarted(stop_requested=False)
        await eventually_on_every_node(admin, job.id, "RUNNING")
        await worker_queue.apply(c.ReportJobEnd(job_id, 1, AttemptResult("exited", 0), True))
        await worker_queue.apply(c.Delete("w-client", job_id))
        await eventually_on_every_node(admin, job.id, "COMPLETED")
        done = await admin[2].GetJobStatus(joblet_pb2.GetJobStatusReq(id=job.id), timeout=5)
        assert done.exitCode == 0 and done.startTime and done.endTime
        assert done.details.worker_id == "host:1" and done.details.result == "exited"

    on_cluster(cluster, scenario)


def test_stop_of_a_queued_job_removes_it_and_a_second_stop_is_refused(
    cluster: ProcessCluster,
) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        job = await admin[0].RunJob(joblet_pb2.RunJobReq(command="sleep", args=["60"]), timeout=10)
        stopped = await admin[2].StopJob(joblet_pb2.StopJobReq(id=job.id), timeout=15)
        assert (stopped.id, stopped.status, stopped.exitCode) == (job.id, "STOPPED", -1)
        assert stopped.endTime.endswith("Z")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin[1].StopJob(joblet_pb2.StopJobReq(id=job.id), timeout=15)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == f"job is not running: {job.id} (current status: STOPPED)"

    on_cluster(cluster, scenario)


def test_unknown_job_is_not_found_as_joblet_says_it(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        for call in (
            admin[0].GetJobStatus(joblet_pb2.GetJobStatusReq(id="999999"), timeout=5),
            admin[1].StopJob(joblet_pb2.StopJobReq(id="999999"), timeout=5),
            admin[2].GetJobStatus(joblet_pb2.GetJobStatusReq(id="abc"), timeout=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details().startswith("job not found: ")

    on_cluster(cluster, scenario)


@pytest.mark.parametrize(
    ("request_fields", "fragment"),
    [
        ({"command": ""}, "invalid command: command is empty"),
        ({"command": "true", "maxMemory": -5}, "limits.memory_mb"),
        ({"command": "true", "network": "bridge"}, "network"),
        ({"command": "true", "env": ["NOEQUALS"]}, "NAME=value"),
        ({"command": "true", "cpu_cores": "x"}, "cpu_cores"),
    ],
)
def test_invalid_requests_are_invalid_argument_naming_the_field(
    cluster: ProcessCluster, request_fields: dict[str, object], fragment: str
) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin[0].RunJob(joblet_pb2.RunJobReq(**request_fields), timeout=5)  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in caught.value.details()

    on_cluster(cluster, scenario)


def test_a_viewer_may_read_and_list_but_not_run_or_stop(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        job = await admin[0].RunJob(joblet_pb2.RunJobReq(command="true"), timeout=10)
        await eventually_on_every_node(admin, job.id, "INITIALIZING")
        async with open_channel(cluster.nodes[1].grpc_addr, cluster.tls_dir, "viewer") as channel:
            viewer = joblet_pb2_grpc.JobletServiceStub(channel)
            await viewer.GetJobStatus(joblet_pb2.GetJobStatusReq(id=job.id), timeout=5)
            listed = await viewer.ListJobs(joblet_pb2.EmptyRequest(), timeout=5)
            assert job.id in [j.id for j in listed.jobs]
            for call, operation in (
                (viewer.RunJob(joblet_pb2.RunJobReq(command="true"), timeout=5), "run_job"),
                (viewer.StopJob(joblet_pb2.StopJobReq(id=job.id), timeout=5), "stop_job"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert caught.value.details().startswith(
                    f"role viewer is not allowed to perform operation {operation}"
                )

    on_cluster(cluster, scenario)


def test_a_proxy_or_worker_certificate_has_no_job_api(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        for role in ("proxy", "worker"):
            async with open_channel(cluster.nodes[0].grpc_addr, cluster.tls_dir, role) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await joblet_pb2_grpc.JobletServiceStub(channel).ListJobs(
                        joblet_pb2.EmptyRequest(), timeout=5
                    )
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    on_cluster(cluster, scenario)


def test_list_pages_in_id_order_and_filters_by_status(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        ids = []
        for _ in range(5):
            job = await admin[0].RunJob(joblet_pb2.RunJobReq(command="true", tube="jobapi-list"))
            ids.append(job.id)
        await admin[0].StopJob(joblet_pb2.StopJobReq(id=ids[2]), timeout=15)
        await eventually_on_every_node(admin, ids[2], "STOPPED")
        seen: list[str] = []
        token = ""
        while True:
            page = await admin[1].ListJobsPage(
                joblet_pb2.ListJobsReq(page_size=2, page_token=token), timeout=5
            )
            assert len(page.jobs) <= 2
            seen += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert [int(i) for i in seen] == sorted(int(i) for i in seen)
        assert set(ids) <= set(seen)
        stopped = await admin[2].ListJobsPage(
            joblet_pb2.ListJobsReq(statuses=["stopped"]), timeout=5
        )
        assert ids[2] in [j.id for j in stopped.jobs]
        assert all(j.status == "STOPPED" for j in stopped.jobs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin[0].ListJobsPage(joblet_pb2.ListJobsReq(statuses=["DONE"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    on_cluster(cluster, scenario)


def test_a_run_job_retried_with_its_request_id_creates_one_job(cluster: ProcessCluster) -> None:
    async def scenario(admin: Stubs, worker_queue: RemoteQueue) -> None:
        request = joblet_pb2.RunJobReq(command="true", request_id="jobapi-retry-1")
        first = await admin[0].RunJob(request, timeout=10)
        again = await admin[2].RunJob(request, timeout=10)
        assert first.id == again.id

    on_cluster(cluster, scenario)


def test_records_survive_kill_9_of_every_node(cluster: ProcessCluster) -> None:
    made: list[tuple[str, str]] = []

    async def before(admin: Stubs, worker_queue: RemoteQueue) -> None:
        queued = await admin[0].RunJob(joblet_pb2.RunJobReq(command="true", tube="kill-all"))
        stopped = await admin[1].RunJob(joblet_pb2.RunJobReq(command="true", tube="kill-all"))
        await admin[2].StopJob(joblet_pb2.StopJobReq(id=stopped.id), timeout=15)
        made.extend([(queued.id, "INITIALIZING"), (stopped.id, "STOPPED")])

    on_cluster(cluster, before)
    for node in cluster.nodes:
        node.kill()
    for node in cluster.nodes:
        node.restart()
    asyncio.run(cluster.wait_for_leader())

    async def after(admin: Stubs, worker_queue: RemoteQueue) -> None:
        for job_id, status in made:
            await eventually_within(admin, job_id, status, 30.0)

    on_cluster(cluster, after)
