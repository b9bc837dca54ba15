"""Benchmark: the cost of isolation, and jobs per second through one worker pool.

Run as root: ``python -m bench.executor_bench [--runs 200] [--jobs 400] [--concurrency 8]
[--endpoint HOST:PORT]``. Results and the exact command line go to docs/benchmarks.md.

1. Isolated start-to-exit of ``/bin/true``: `runner.start` (cgroup created with limits, launcher
   forked, namespaces, pivot_root, privileges dropped, exec) to `runner.wait` returning (exit
   status read, accounting read, cgroup removed), p50 and p99 over --runs runs. Next to it, in the
   same run and interleaved with it, a plain fork + exec + waitpid of ``/bin/true``. The target
   is that isolation adds under 20 ms at p50 (reported, never asserted).
2. Jobs per second: one ``beanraft worker --concurrency N`` watching a fresh tube; once all its
   slots watch it, --jobs jobs of ``/bin/true`` are put (one producer connection) and the clock
   runs until the tube is empty (every job reserved, run isolated, deleted). Against a
   beanstalkd 1.12 started here, or --endpoint (e.g. a beanraft proxy in front of a 3-node
   cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import greenstalk

from cluster.jobspec import spec_from_dict
from executor import runner, seccomp, uids
from executor.cgroup_backends import open_backend
from executor.cgroups import CGROUP_MOUNT, CgroupError, remove_dirs, v1_hierarchies
from executor.client import parse_address
from executor.plan import WorkerPolicy, make_plan
from executor.worker import host_layout

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def plain_fork_exec_ms() -> float:
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    return (time.perf_counter() - started) * 1000


def isolated_true_ms(
    backend: object, log_dir: str, index: int, job_uid: int, seccomp_filter: object
) -> float:
    """One isolated /bin/true with every layer a worker applies by default: namespaces,
    masked /proc, cgroup limits, rlimits, its own uid, a fresh keyring, seccomp, piped output."""
    spec = spec_from_dict({"command": "/bin/true", "limits": {"memory_mb": 64}})
    plan = make_plan(spec, index, 1, host_layout(), WorkerPolicy(), job_uid)
    out = os.path.join(log_dir, f"{index}.log")
    started = time.perf_counter()
    job = runner.start(plan, backend, out, out, seccomp_filter)  # type: ignore[arg-type]
    result = runner.wait(job, lambda: None, 60_000, lambda: False)
    elapsed = (time.perf_counter() - started) * 1000
    assert result.succeeded, result
    return elapsed


def remove_cgroup_root(name: str) -> None:
    """Remove the benchmark's (by now empty) cgroup subtree from every hierarchy."""
    for mount in {*v1_hierarchies().values(), CGROUP_MOUNT}:
        with contextlib.suppress(OSError, CgroupError):
            remove_dirs([os.path.join(mount, name)])


def bench_isolation(runs: int) -> None:
    root = f"beanraft-bench-{uuid.uuid4().hex[:6]}"
    backend = open_backend(root)
    isolated: list[float] = []
    plain: list[float] = []
    lease = uids.lease(*uids.DEFAULT_UID_RANGE)
    seccomp_filter = seccomp.prepare(seccomp.build_filter())
    with tempfile.TemporaryDirectory() as log_dir:
        try:
            for i in range(runs):
                plain.append(plain_fork_exec_ms())
                isolated.append(
                    isolated_true_ms(backend, log_dir, i + 1, lease.uid, seccomp_filter)
                )
        finally:
            backend.close()
            remove_cgroup_root(root)
            lease.release()
    p50_i, p99_i = percentile(isolated, 50), percentile(isolated, 99)
    p50_p, p99_p = percentile(plain, 50), percentile(plain, 99)
    print(
        f"isolated /bin/true, {runs} runs: p50 {p50_i:.2f} ms, p99 {p99_i:.2f} ms, "
        f"mean {statistics.mean(isolated):.2f} ms"
    )
    print(f"plain fork+exec /bin/true:      p50 {p50_p:.2f} ms, p99 {p99_p:.2f} ms")
    print(f"isolation adds at p50: {p50_i - p50_p:.2f} ms (target: isolated p50 < 25 ms)")


def start_beanstalkd() -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(["/usr/bin/beanstalkd", "-l", "127.0.0.1", "-p", str(port)])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, ("127.0.0.1", port)


def tube_left(address: tuple[str, int], tube: str) -> int:
    with greenstalk.Client(address) as client:
        try:
            stats = client.stats_tube(tube)
        except greenstalk.NotFoundError:
            return 0
        ready, reserved = stats["current-jobs-ready"], stats["current-jobs-reserved"]
        return int(ready) + int(reserved) + int(stats["current-jobs-delayed"])


def watching(address: tuple[str, int], tube: str) -> int:
    with greenstalk.Client(address) as client:
        try:
            return int(client.stats_tube(tube)["current-watching"])
        except greenstalk.NotFoundError:
            return 0


def bench_pool(address: tuple[str, int], jobs: int, concurrency: int, label: str) -> None:
    tube = f"bench-{uuid.uuid4().hex[:6]}"
    log_dir = tempfile.mkdtemp(prefix="beanraft-bench-logs-")
    root = f"beanraft-bench-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "beanraft", "worker", "--beanstalkd", f"{address[0]}:{address[1]}"]
    cmd += ["--tubes", tube, "--concurrency", str(concurrency), "--log-dir", log_dir]
    cmd += ["--cgroup-root", root]
    worker = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = json.dumps({"command": "/bin/true"})
    try:
        # Every slot connected and watching: the clock then measures jobs, not the start.
        while watching(address, tube) < concurrency:
            time.sleep(0.05)
        started = time.perf_counter()
        with greenstalk.Client(address, use=tube) as producer:
            for _ in range(jobs):
                producer.put(body)
        while tube_left(address, tube):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(60)
        shutil.rmtree(log_dir, ignore_errors=True)
        remove_cgroup_root(root)
    print(
        f"worker pool --concurrency {concurrency} via {label}: {jobs} jobs of /bin/true put and "
        f"run in {elapsed:.2f} s = {jobs / elapsed:.1f} jobs/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--endpoint", help="HOST:PORT of a beanstalkd-protocol endpoint")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("executor_bench: run as root (namespaces and cgroups)", file=sys.stderr)
        return 2
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )
    bench_isolation(args.runs)
    if args.endpoint:
        bench_pool(parse_address(args.endpoint), args.jobs, args.concurrency, args.endpoint)
    else:
        proc, address = start_beanstalkd()
        try:
            bench_pool(address, args.jobs, args.concurrency, "beanstalkd 1.12")
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
