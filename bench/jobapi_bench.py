"""The job API's figures (issue 15's targets), printed with the machine they ran on.

    .venv/bin/python -m bench.jobapi_bench [--runs 300] [--records 100000]

1. RunJob latency through a 3-node cluster (`--fsync batch`, the default; insecure gRPC, as the
   other cluster benchmarks), sent to the leader and to a follower; p50 and p99.
2. How long a new record takes to show on another node (GetJobStatus polled every millisecond on a
   follower right after RunJob returns on the leader); p50 and p99.
3. ListJobs (all records in one answer) and one ListJobsPage of 1,000, with `--records` records.
4. Memory per finished record, in one process (tracemalloc over a machine holding them).
5. What keeping records costs the beanstalkd path: put/reserve/delete cycles on the state
   machine with no records and beside `--records` finished records, in the same run.
6. As root: how soon a line a job prints reaches a `GetJobLogs` follower on another node (a
   proxy and a reporting worker join the cluster; the job prints its clock every 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.cluster_bench import Cluster

REQUEST_LIMIT = [("grpc.max_receive_message_length", 64 << 20)]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def run_latency(cluster: Cluster, leader: int, runs: int) -> None:
    from api import joblet_pb2, joblet_pb2_grpc
    from api.client import open_channel

    follower = (leader + 1) % 3
    for name, node in (("leader", leader), ("follower", follower)):
        async with open_channel(cluster.grpc[node], None, "admin") as channel:
            stub = joblet_pb2_grpc.JobletServiceStub(channel)
            samples = []
            for i in range(runs):
                request = joblet_pb2.RunJobReq(command="true", tube=f"bench-{name}")
                started = time.perf_counter()
                await stub.RunJob(request, timeout=10)
                samples.append((time.perf_counter() - started) * 1000)
                del i
        print(
            f"RunJob via the {name:<8}  {runs} runs: p50 {percentile(samples, 50):.2f} ms, "
            f"p99 {percentile(samples, 99):.2f} ms  (target p50 < 5 ms)"
        )


async def visibility(cluster: Cluster, leader: int, runs: int) -> None:
    import grpc

    from api import joblet_pb2, joblet_pb2_grpc
    from api.client import open_channel

    follower = (leader + 1) % 3
    async with (
        open_channel(cluster.grpc[leader], None, "admin") as lead,
        open_channel(cluster.grpc[follower], None, "admin") as other,
    ):
        runs_on = joblet_pb2_grpc.JobletServiceStub(lead)
        reads = joblet_pb2_grpc.JobletServiceStub(other)
        delays = []
        for _ in range(runs):
            job = await runs_on.RunJob(joblet_pb2.RunJobReq(command="true"), timeout=10)
            returned = time.perf_counter()
            while True:
                try:
                    await reads.GetJobStatus(joblet_pb2.GetJobStatusReq(id=job.id), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.001)
            delays.append((time.perf_counter() - returned) * 1000)
    print(
        f"a new record visible on a follower after RunJob returned, {runs} runs: "
        f"p50 {percentile(delays, 50):.2f} ms, p99 {percentile(delays, 99):.2f} ms "
        "(target p99 < 1000 ms)"
    )


async def fill(cluster: Cluster, leader: int, records: int) -> None:
    """``records`` RunJob commands through the Apply path, many in flight (batched entries)."""
    from api.client import RemoteQueue
    from statemachine import commands as c
    from statemachine.records import JobSummary

    queue = RemoteQueue([cluster.grpc[leader]], None, "admin")
    summary = JobSummary("true", ("a", "b"), max_cpu=50, max_memory_mb=64)
    started = time.perf_counter()
    sent = 0
    while sent < records:
        batch = min(2000, records - sent)
        await asyncio.gather(
            *(
                queue.apply(c.RunJob(c.Put("bench-fill", 1024, 0, 60_000, b"{}"), summary))
                for _ in range(batch)
            )
        )
        sent += batch
    await queue.close()
    print(f"filled {records} records in {time.perf_counter() - started:.1f} s")


async def listing(cluster: Cluster, leader: int, records: int) -> None:
    import grpc

    from api import joblet_pb2, joblet_pb2_grpc

    follower = (leader + 1) % 3
    async with grpc.aio.insecure_channel(cluster.grpc[follower], options=REQUEST_LIMIT) as channel:
        stub = joblet_pb2_grpc.JobletServiceStub(channel)
        times, pages = [], []
        count = 0
        for _ in range(3):
            started = time.perf_counter()
            reply = await stub.ListJobs(joblet_pb2.EmptyRequest(), timeout=60)
            times.append(time.perf_counter() - started)
            count = len(reply.jobs)
            started = time.perf_counter()
            await stub.ListJobsPage(joblet_pb2.ListJobsReq(page_size=1000), timeout=60)
            pages.append(time.perf_counter() - started)
    print(
        f"ListJobs of {count} records (on a follower): best {min(times):.3f} s, "
        f"median {statistics.median(times):.3f} s (target < 1 s); "
        f"a page of 1,000: median {statistics.median(pages) * 1000:.1f} ms"
    )
    del records


def memory_per_record(records: int) -> None:
    from statemachine import commands as c
    from statemachine.machine import JobStateMachine
    from statemachine.records import AttemptResult, JobSummary

    machine = JobStateMachine()
    summary = JobSummary("python3", ("-c", "print(1)"), max_cpu=50, max_memory_mb=256)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(records):
        put = c.Put("mem", 1024, 0, 60_000, b"{}")
        machine.apply(c.RunJob(put, summary), i)
        job_id = i + 1
        machine.apply(c.Connect("w", "p"), i)
        machine.apply(c.ReserveJob("w", job_id), i)
        machine.apply(c.ReportJobStart(job_id, 1, "host:1", "127.0.0.1:1", summary, "mem", 1), i)
        result = AttemptResult("exited", 0, duration_ms=12, peak_memory_bytes=1 << 20)
        machine.apply(c.ReportJobEnd(job_id, 1, result, True), i)
        machine.apply(c.Delete("w", job_id), i)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(
        f"memory per finished record (in-process, {records} records, summary with 2 args): "
        f"{grown / records:.0f} bytes"
    )


def beanstalkd_path_cost(records: int, cycles: int) -> None:
    from statemachine import commands as c
    from statemachine.machine import JobStateMachine
    from statemachine.records import JobSummary

    def rate(machine: JobStateMachine) -> float:
        machine.apply(c.Connect("client", "proxy"), 10**9)
        started = time.perf_counter()
        for i in range(cycles):
            now = 10**9 + i
            reply = machine.apply(c.Put("path", 1024, 0, 60_000, b"x"), now).reply
            machine.apply(c.Reserve("client", 0), now)
            machine.apply(c.Delete("client", reply.job_id), now)  # type: ignore[union-attr]
        return cycles / (time.perf_counter() - started)

    with_records = JobStateMachine()
    summary = JobSummary("true")
    for i in range(records):
        with_records.apply(c.RunJob(c.Put("kept", 1024, 0, 60_000, b"{}"), summary), i)
        with_records.apply(c.StopJob(i + 1), i)  # finished records, kept by retention
    plain = [rate(JobStateMachine()) for _ in range(3)]
    kept = [rate(with_records) for _ in range(3)]
    ratio = statistics.median(kept) / statistics.median(plain)
    print(
        f"put-reserve-delete cycles on the machine: {statistics.median(plain):,.0f}/s without "
        f"records, {statistics.median(kept):,.0f}/s beside {records} finished records: "
        f"ratio {ratio:.3f} (target >= 0.90)"
    )


PRINT_CLOCK = (
    "import time\nfor _ in range(60):\n    print(time.time(), flush=True)\n    time.sleep(0.1)"
)


async def log_latency(cluster: Cluster, leader: int, root: Path) -> None:
    """Lines printed by a running job, as a follower on another node receives them."""
    import subprocess

    from api import joblet_pb2, joblet_pb2_grpc
    from api.client import open_channel

    port = free_port()
    addresses = ",".join(cluster.grpc)
    base = [sys.executable, "-m", "beanraft"]
    proxy = subprocess.Popen(
        [*base, "proxy", "--listen", f"127.0.0.1:{port}", "--cluster", addresses, "--insecure"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker_argv = [*base, "worker", "--beanstalkd", f"127.0.0.1:{port}", "--cluster", addresses]
    worker_argv += ["--insecure", "--log-dir", str(root / "logs")]
    worker = subprocess.Popen(
        [*worker_argv, "--cgroup-root", "beanraft-bench-logs"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        follower = (leader + 1) % 3
        async with open_channel(cluster.grpc[follower], None, "admin") as channel:
            stub = joblet_pb2_grpc.JobletServiceStub(channel)
            job = await stub.RunJob(
                joblet_pb2.RunJobReq(command="/usr/bin/python3", args=["-c", PRINT_CLOCK]),
                timeout=30,
            )
            delays: list[float] = []
            pending = b""
            async for chunk in stub.GetJobLogs(joblet_pb2.GetJobLogsReq(id=job.id), timeout=120):
                arrived = time.time()
                pending += chunk.payload
                *lines, pending = pending.split(b"\n")
                delays.extend((arrived - float(line)) * 1000 for line in lines if line)
        print(
            f"a printed line reaching a GetJobLogs follower on another node, {len(delays)} "
            f"lines: p50 {percentile(delays, 50):.1f} ms, p99 {percentile(delays, 99):.1f} ms "
            "(target p99 < 100 ms)"
        )
    finally:
        for proc in (worker, proxy):
            proc.terminate()
            proc.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def cluster_part(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as root:
        cluster = Cluster(Path(root), "batch")
        try:
            leader = await cluster.leader()
            await run_latency(cluster, leader, args.runs)
            await visibility(cluster, leader, args.runs)
            if os.geteuid() == 0:
                await log_latency(cluster, leader, Path(root))
            else:
                print("log latency: skipped (a worker needs root)")
            await fill(cluster, leader, args.records)
            await listing(cluster, leader, args.records)
        finally:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--cycles", type=int, default=50_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    asyncio.run(cluster_part(args))
    memory_per_record(min(args.records, 50_000))
    beanstalkd_path_cost(args.records, args.cycles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
