"""Cluster benchmark: beanraft's 3-node cluster beside raw pysyncobj with the same settings.

Run: ``.venv/bin/python -m bench.cluster_bench [--jobs 100000] [--seconds 5]``

Measures, in one run on this machine:
1. raw pysyncobj: a replicated counter on 3 processes (password, journal + dump file,
   appendEntriesUseBatch=False, the same timeouts), driven inside the leader with many
   increments in flight: commits/s;
2. beanraft: put throughput from one client process with many requests in flight (gRPC
   ``Apply`` through ``RemoteQueue``), single-client put p50 and p99 (sequential puts), time
   from kill -9 of the leader to the next acknowledged put, and each node's resident memory
   after ``--jobs`` puts, extrapolated linearly to 1,000,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api.client import RemoteQueue
from statemachine.commands import Put

SECRET = "bench-cluster-secret-0123456789"


def _free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# --- raw pysyncobj ------------------------------------------------------------------------


def raw_node(index: int, addrs: list[str], data_dir: str, seconds: float, inflight: int) -> None:
    """One raw pysyncobj node; the one that becomes leader drives the load and prints ops/s."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, conf: SyncObjConf) -> None:
            super().__init__(addrs[index], [a for a in addrs if a != addrs[index]], conf)
            self.value = 0

        @replicated  # type: ignore[untyped-decorator]
        def incr(self) -> int:
            self.value += 1
            return int(self.value)

    conf = SyncObjConf(
        password=SECRET,
        bindAddress=addrs[index],
        journalFile=f"{data_dir}/raw-{index}.journal",
        fullDumpFile=f"{data_dir}/raw-{index}.dump",
        appendEntriesUseBatch=False,
        appendEntriesPeriod=0.05,
        raftMinTimeout=0.3,
        raftMaxTimeout=0.8,
        commandsWaitLeader=False,
        dynamicMembershipChange=True,
    )
    counter = Counter(conf)
    while counter._getLeader() is None:
        time.sleep(0.05)
    if not counter._isLeader():
        time.sleep(seconds + 30)
        return
    import threading

    samples = []
    for _ in range(1000):
        begin = time.perf_counter()
        counter.incr(sync=True, timeout=10)
        samples.append(time.perf_counter() - begin)
    samples.sort()
    p50_ms, p99_ms = samples[500] * 1000, samples[990] * 1000
    done = 0
    window = threading.Semaphore(inflight)

    def callback(_result: object, error: int) -> None:
        nonlocal done
        if error == FAIL_REASON.SUCCESS:
            done += 1
        window.release()

    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        window.acquire()
        counter.incr(callback=callback)
    elapsed = time.perf_counter() - start
    result = {"raw_ops_per_s": done / elapsed, "raw_p50_ms": p50_ms, "raw_p99_ms": p99_ms}
    print(json.dumps(result), flush=True)


def bench_raw(seconds: float, inflight: int) -> dict[str, float]:
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    with tempfile.TemporaryDirectory() as data_dir:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.cluster_bench", "--raw-node", str(i),
                 "--raw-addrs", ",".join(addrs), "--raw-dir", data_dir,
                 "--seconds", str(seconds), "--inflight", str(inflight)],
                stdout=subprocess.PIPE, text=True,
            )
            for i in range(3)
        ]  # fmt: skip
        try:
            while True:
                for proc in procs:
                    if proc.poll() is not None and proc.stdout is not None:
                        out = proc.stdout.read().strip()
                        if out:
                            result: dict[str, float] = json.loads(out.splitlines()[-1])
                            return result
                time.sleep(0.1)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


# --- beanraft -------------------------------------------------------------------------------


class Cluster:
    def __init__(self, root: Path, fsync: str) -> None:
        (root / "secret").write_text(SECRET)
        ports = _free_ports(6)
        self.raft = [f"127.0.0.1:{p}" for p in ports[:3]]
        self.grpc = [f"127.0.0.1:{p}" for p in ports[3:]]
        self.argv = []
        for i in range(3):
            argv = [sys.executable, "-m", "beanraft", "node", "--node-id", str(i + 1)]
            argv += ["--data-dir", str(root / f"n{i + 1}"), "--raft-addr", self.raft[i]]
            argv += ["--grpc-addr", self.grpc[i], "--insecure", "--fsync", fsync]
            argv += ["--cluster-secret-file", str(root / "secret")]
            argv += ["--peers", ",".join(a for a in self.raft if a != self.raft[i])]
            self.argv.append(argv)
        self.procs: list[subprocess.Popen[bytes] | None] = [
            subprocess.Popen(a, stderr=subprocess.DEVNULL) for a in self.argv
        ]

    async def leader(self) -> int:
        from api import cluster_pb2_grpc, empty_pb2
        from api.client import open_channel

        while True:
            for i, addr in enumerate(self.grpc):
                if self.procs[i] is None:
                    continue
                async with open_channel(addr, None, "admin") as channel:
                    try:
                        status = await cluster_pb2_grpc.ClusterStub(channel).Status(
                            empty_pb2.Empty(), timeout=2
                        )
                    except Exception:
                        continue
                    if status.is_leader and status.ready:
                        return i
            await asyncio.sleep(0.1)

    def rss_mib(self) -> list[float]:
        sizes = []
        for proc in self.procs:
            if proc is None:
                continue
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.terminate()
                proc.wait()


def _put(body: bytes) -> Put:
    return Put("bench", 1, 0, 60_000, body)


async def bench_latency(queue: RemoteQueue, count: int) -> tuple[float, float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await queue.apply(_put(b"lat-%d" % i))
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000


async def bench_throughput(queue: RemoteQueue, seconds: float, inflight: int) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await queue.apply(_put(b"thr"))
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - start)


async def bench_memory(
    cluster: Cluster, queue: RemoteQueue, jobs: int, inflight: int
) -> list[float]:
    before = cluster.rss_mib()
    body = b"x" * 100
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with sem:
            await queue.apply(_put(body))

    for start in range(0, jobs, 10_000):
        await asyncio.gather(*(one() for _ in range(min(10_000, jobs - start))))
    await asyncio.sleep(2.0)
    after = cluster.rss_mib()
    return [(a - b) * 1_000_000 / jobs for a, b in zip(after, before, strict=True)]


async def bench_failover(cluster: Cluster, queue: RemoteQueue) -> float:
    leader = await cluster.leader()
    await queue.apply(_put(b"before"))
    killed_at = time.perf_counter()
    cluster.kill(leader)
    await queue.apply(_put(b"after"))
    return time.perf_counter() - killed_at


async def bench_beanraft(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as root:
        cluster = Cluster(Path(root), args.fsync)
        try:
            leader = await cluster.leader()
            order = [cluster.grpc[leader]] + [a for a in cluster.grpc if a != cluster.grpc[leader]]
            queue = RemoteQueue(order, None)
            await queue.apply(_put(b"warm-up"))
            results["put_p50_ms"], results["put_p99_ms"] = await bench_latency(queue, 2000)
            results["put_ops_per_s"] = await bench_throughput(queue, args.seconds, args.inflight)
            per_million = await bench_memory(cluster, queue, args.jobs, args.inflight)
            results["rss_mib_per_million_jobs"] = [round(x) for x in per_million]
            results["rss_mib_now"] = [round(x) for x in cluster.rss_mib()]
            results["failover_s"] = await bench_failover(cluster, queue)
            await queue.close()
        finally:
            cluster.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--fsync", default="batch", choices=("always", "batch", "never"))
    parser.add_argument("--raw-node", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw-addrs", help=argparse.SUPPRESS)
    parser.add_argument("--raw-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_node is not None:
        raw_node(args.raw_node, args.raw_addrs.split(","), args.raw_dir, args.seconds, 2000)
        return 0
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"settings: 3 nodes on 127.0.0.1, fsync={args.fsync}, {args.inflight} puts in flight")
    raw_results = bench_raw(args.seconds, 2000)
    raw = raw_results["raw_ops_per_s"]
    print(f"raw pysyncobj counter (2000 in flight, driven in the leader): {raw:,.0f} ops/s")
    print(
        f"raw pysyncobj single synchronous caller in the leader: p50 "
        f"{raw_results['raw_p50_ms']:.2f} ms, p99 {raw_results['raw_p99_ms']:.2f} ms"
    )
    results = asyncio.run(bench_beanraft(args))
    put_rate = float(results["put_ops_per_s"])  # type: ignore[arg-type]
    print(f"beanraft put throughput: {put_rate:,.0f} puts/s ({put_rate / raw:.0%} of raw)")
    print(
        f"beanraft single-client put: p50 {results['put_p50_ms']:.2f} ms, "
        f"p99 {results['put_p99_ms']:.2f} ms"
    )
    print(f"leader kill -9 -> next acknowledged put: {results['failover_s']:.2f} s")
    print(
        f"memory: RSS growth per node extrapolated to 1,000,000 jobs (100-byte bodies, measured "
        f"with {args.jobs:,}): {results['rss_mib_per_million_jobs']} MiB; "
        f"RSS now {results['rss_mib_now']} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
