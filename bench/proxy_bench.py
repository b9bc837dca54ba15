"""The beanstalkd proxy against beanstalkd 1.12, measured with greenstalk in one run.

    .venv/bin/python -m bench.proxy_bench [--jobs 4000] [--latency-samples 400] [--no-cluster]

Targets, each started fresh on free loopback ports and stopped afterwards:
- beanstalkd 1.12 in memory, and with ``-b DIR -f0`` (fsync on every write: durable, one node);
- ``beanraft proxy --standalone`` (the state machine in-process: the proxy's own cost);
- ``beanraft proxy --cluster`` in front of three ``beanraft node`` processes (replicated);
- the same three nodes serving the protocol themselves (``--beanstalkd-listen``), the client on
  the leader's listener (the direct path, issue 17), and on a follower's (forwarded).

Workloads (16-byte bodies, each connection in its own tube):
- put/s and put-reserve-delete cycles/s with 1 connection and with 32 (one thread each);
- put-to-waiting-reserve latency: a consumer waits in ``reserve``, a producer puts, the time
  from just before the put to the consumer holding the job; p50 and p99;
- one client's put latency, one put at a time; p50 and p99.
Prints the figures, the machine, and each target's ratios to in-memory beanstalkd and to
``-b -f0`` (issue 4's target: with 32 connections, the cluster at least matches ``-b -f0``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import greenstalk

REPO = Path(__file__).resolve().parents[1]
BODY = "b" * 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listened on {port}")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def beanstalkd(*flags: str) -> Iterator[int]:
    port = _free_port()
    binlog = tempfile.mkdtemp(prefix="bench-binlog-")
    args = [shutil.which("beanstalkd") or "/usr/bin/beanstalkd", "-l", "127.0.0.1", "-p", str(port)]
    args += [binlog if f == "DIR" else f for f in flags]
    process = subprocess.Popen(args)
    try:
        _wait_port(port)
        yield port
    finally:
        _stop([process])
        shutil.rmtree(binlog, ignore_errors=True)


def _proxy(mode: list[str]) -> tuple[int, subprocess.Popen[bytes]]:
    args = [sys.executable, "-m", "beanraft", "proxy", "--listen", "127.0.0.1:0", *mode]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening "):
        _stop([process])
        raise RuntimeError(f"proxy did not start: {line!r}")
    return int(line.rsplit(":", 1)[1]), process


@contextmanager
def standalone() -> Iterator[int]:
    port, process = _proxy(["--standalone"])
    try:
        yield port
    finally:
        _stop([process])


@contextmanager
def cluster() -> Iterator[int]:
    with cluster_processes() as (port, _, _):
        yield port


def _start_nodes(
    root: Path, fsync: str, listens: list[str] | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Three ``beanraft node`` processes (``--insecure``, ``--fsync`` ``fsync``), serving the
    beanstalkd protocol on ``listens`` when given; the processes and their gRPC addresses."""
    raft = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    grpc = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    nodes = []
    for i in range(3):
        peers = ",".join(a for j, a in enumerate(raft) if j != i)
        args = [
            sys.executable, "-m", "beanraft", "node", "--node-id", f"n{i + 1}",
            "--data-dir", str(root / f"n{i + 1}"), "--raft-addr", raft[i],
            "--grpc-addr", grpc[i], "--peers", peers, "--insecure", "--fsync", fsync,
        ]  # fmt: skip
        if listens is not None:
            args += ["--beanstalkd-listen", listens[i]]
        log = open(root / f"n{i + 1}.log", "wb")  # noqa: SIM115 - the child owns it
        nodes.append(subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return nodes, grpc


@contextmanager
def cluster_processes(fsync: str = "batch") -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """A proxy in front of three nodes (``--fsync`` policy ``fsync``, the nodes' default
    unless a benchmark asks): its port, the nodes' gRPC addresses, and every process's pid by
    name (``proxy``, ``n1``..``n3``) for benchmarks that weigh them."""
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    nodes, grpc = _start_nodes(root, fsync)
    processes = list(nodes)
    try:
        port, proxy = _proxy(["--cluster", ",".join(grpc), "--insecure"])
        processes.insert(0, proxy)
        pids = {"proxy": proxy.pid} | {f"n{i + 1}": node.pid for i, node in enumerate(nodes)}
        yield port, grpc, pids
    finally:
        _stop(processes)
        shutil.rmtree(root, ignore_errors=True)


def machine() -> str:
    """The line every benchmark prints first: figures mean little without it."""
    return (
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )


# --- workloads --------------------------------------------------------------------------------


def _client(port: int, tube: str) -> greenstalk.Client[str]:
    return greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube)


def _parallel(
    port: int, connections: int, jobs: int, work: Callable[[greenstalk.Client[str], int], None]
) -> float:
    """Run ``work(client, n)`` on ``connections`` threads sharing ``jobs``; return ops/s."""
    per = jobs // connections
    stamp = time.monotonic_ns()
    clients = [_client(port, f"bench-{stamp}-{i}") for i in range(connections)]
    barrier = threading.Barrier(connections + 1)
    errors: list[BaseException] = []

    def run(c: greenstalk.Client[str]) -> None:
        barrier.wait()
        try:
            work(c, per)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        c.close()
    if errors:
        raise errors[0]
    return per * connections / elapsed


def _puts(c: greenstalk.Client[str], n: int) -> None:
    for _ in range(n):
        c.put(BODY)


def _cycles(c: greenstalk.Client[str], n: int) -> None:
    for _ in range(n):
        c.put(BODY)
        c.delete(c.reserve(timeout=10))


def _latency_ms(port: int, samples: int) -> tuple[float, float]:
    tube = f"latency-{time.monotonic_ns()}"
    worker, producer = _client(port, tube), _client(port, tube)
    received: list[float] = []
    ready = threading.Event()

    def consume() -> None:
        for _ in range(samples):
            ready.set()
            job = worker.reserve(timeout=30)
            received.append(time.perf_counter())
            worker.delete(job)

    thread = threading.Thread(target=consume)
    thread.start()
    latencies = []
    for i in range(samples):
        ready.wait()
        ready.clear()
        time.sleep(0.003)  # the consumer is now blocked in reserve
        sent = time.perf_counter()
        producer.put(BODY)
        while len(received) <= i:
            time.sleep(0.0002)
        latencies.append((received[i] - sent) * 1000)
    thread.join()
    worker.close()
    producer.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def _put_latency_ms(port: int, samples: int) -> tuple[float, float]:
    """One client alone, one put at a time: the time of each put, p50 and p99 (issue 17's
    single-client target)."""
    client = _client(port, f"put-latency-{time.monotonic_ns()}")
    latencies = []
    for _ in range(samples):
        sent = time.perf_counter()
        client.put(BODY)
        latencies.append((time.perf_counter() - sent) * 1000)
    client.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def measure(port: int, jobs: int, samples: int) -> dict[str, float]:
    figures = {
        "put/s 1c": _parallel(port, 1, jobs, _puts),
        "put/s 32c": _parallel(port, 32, jobs * 2, _puts),
        "cycle/s 1c": _parallel(port, 1, jobs // 2, _cycles),
        "cycle/s 32c": _parallel(port, 32, jobs, _cycles),
    }
    figures["wait p50 ms"], figures["wait p99 ms"] = _latency_ms(port, samples)
    figures["put p50 ms"], figures["put p99 ms"] = _put_latency_ms(port, samples * 5)
    return figures


@contextmanager
def node_listener(fsync: str = "batch") -> Iterator[int]:
    """Three nodes serving the beanstalkd protocol themselves (``--beanstalkd-listen``, the
    direct path); yields the leader's listener port."""
    with direct_processes(fsync) as (port, _, _):
        yield port


@contextmanager
def follower_listener(fsync: str = "batch") -> Iterator[int]:
    """As ``node_listener``, the client on a follower's listener (each command forwarded)."""
    with direct_processes(fsync, on="follower") as (port, _, _):
        yield port


@contextmanager
def direct_processes(
    fsync: str = "batch", on: str = "leader"
) -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """Three nodes serving the protocol themselves: the listener port of the leader (or of a
    follower, ``on="follower"``), the gRPC addresses, and the pids (``n1``..``n3``)."""
    root = Path(tempfile.mkdtemp(prefix="bench-direct-"))
    ports = [_free_port() for _ in range(3)]
    nodes, grpc = _start_nodes(root, fsync, [f"127.0.0.1:{port}" for port in ports])
    try:
        for port in ports:
            _wait_port(port, 60)
        leader = _leader_index(grpc)
        chosen = leader if on == "leader" else (leader + 1) % len(ports)
        pids = {f"n{i + 1}": node.pid for i, node in enumerate(nodes)}
        yield ports[chosen], grpc, pids
    finally:
        _stop(nodes)
        shutil.rmtree(root, ignore_errors=True)


def _leader_index(grpc_addrs: list[str]) -> int:
    import grpc as grpc_lib

    from api import cluster_pb2_grpc, empty_pb2

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for i, addr in enumerate(grpc_addrs):
            with grpc_lib.insecure_channel(addr) as channel:
                try:
                    status = cluster_pb2_grpc.ClusterStub(channel).Status(
                        empty_pb2.Empty(), timeout=2
                    )
                except grpc_lib.RpcError:
                    continue
                if status.is_leader and status.ready:
                    return i
        time.sleep(0.1)
    raise RuntimeError("no leader within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--latency-samples", type=int, default=400)
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args()
    targets: list[tuple[str, Callable[[], AbstractContextManager[int]]]] = [
        ("beanstalkd (memory)", lambda: beanstalkd()),
        ("beanstalkd -b -f0", lambda: beanstalkd("-b", "DIR", "-f0")),
        ("proxy --standalone", standalone),
    ]
    if not args.no_cluster:
        targets.append(("proxy, 3-node cluster", cluster))
        targets.append(("leader's own listener", node_listener))
        targets.append(("a follower's listener", follower_listener))
    print(machine())
    results: dict[str, dict[str, float]] = {}
    for name, start in targets:
        with start() as port:
            results[name] = measure(port, args.jobs, args.latency_samples)
        row = "  ".join(f"{k} {v:9.1f}" for k, v in results[name].items())
        print(f"{name:24} {row}", flush=True)
    for base_name in ("beanstalkd (memory)", "beanstalkd -b -f0"):
        # Issue 4's target is the second: with 32 connections, at least -b -f0's rates.
        base = results[base_name]
        print(f"\nratio to {base_name} (throughput: higher is better; latency: lower)")
        for name, figures in results.items():
            print(f"{name:24} " + "  ".join(f"{k} {figures[k] / base[k]:5.2f}" for k in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
