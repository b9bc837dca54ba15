"""Benchmark: the job state machine with a million ready jobs, next to beanstalkd 1.12.

Run: ``python -m bench.statemachine_bench [--jobs N] [--tubes T] [--skip-beanstalkd]``
(``make bench``). Results and the exact command line go to docs/benchmarks.md.

What it measures, in one process on one core (pin it with ``taskset -c 1`` on a shared box):

1. put: N jobs of 100-byte bodies into T tubes (N/T each), one ``apply(Put(...))`` per job; the
   timed loop includes building each ``Put``. Bodies are made before the clock starts, since a
   real body arrives from the network already made.
2. memory per job beyond its body: the growth of this process's resident set (VmRSS) across the
   put phase divided by N, plus the header of each body's ``bytes`` object, which is overhead the
   machine's representation costs (the payload bytes themselves were allocated before).
3. snapshot and restore of those N jobs, and the snapshot's size.
4. reserve-and-delete: one client watching all T tubes reserves (timeout 0) and deletes until
   the queue is empty; pairs per second (each pair is two applies).
5. beanstalkd 1.12 (``/usr/bin/beanstalkd``, no binlog) on a free 127.0.0.1 port, filled with the
   same jobs through one raw socket, pipelined in batches of 1,000 puts per write: its VmRSS
   growth divided by N, minus the 100-byte body, is its memory per job; then the ratio.

Targets (reported, never asserted): >= 100,000 ops/s, memory <= 2x beanstalkd's, snapshot and
restore < 3 s each.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from statemachine.commands import Connect, Delete, Put, Reserve, Watch
from statemachine.machine import JobStateMachine, MachineConfig
from statemachine.replies import Reserved

BEANSTALKD = "/usr/bin/beanstalkd"
BATCH = 1000  # puts per write to beanstalkd, and jobs per tube run (same layout on both sides)
PRIORITY = 1024
TTR_MS = 60_000
NOW_MS = 1_700_000_000_000
TARGET_OPS_PER_S = 100_000
TARGET_MEMORY_RATIO = 2.0
TARGET_SNAPSHOT_S = 3.0


@dataclass
class Figures:
    jobs: int
    tubes: int
    put_s: float = 0.0
    put_rss_bytes: int = 0
    body_header_bytes: int = 0
    snapshot_s: float = 0.0
    snapshot_bytes: int = 0
    restore_s: float = 0.0
    reserve_delete_s: float = 0.0
    beanstalkd_rss_bytes: int | None = None
    beanstalkd_put_s: float | None = None

    @property
    def machine_bytes_per_job(self) -> float:
        return self.put_rss_bytes / self.jobs + self.body_header_bytes


def vm_rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc/PID/status (VmRSS is in kB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def tube_name(i: int) -> str:
    return f"tube-{i:03d}"


def tube_of(job_index: int, tubes: int) -> int:
    """Runs of BATCH jobs per tube, round robin: the layout beanstalkd gets too."""
    return (job_index // BATCH) % tubes


def make_bodies(jobs: int, body_size: int) -> list[bytes]:
    """Distinct bodies, so that no two jobs share one object and memory is counted honestly."""
    return [(b"%0*d" % (body_size, i))[:body_size] for i in range(jobs)]


@contextmanager
def stopwatch(store: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    store[key] = time.perf_counter() - start


def bench_machine(figures: Figures, bodies: list[bytes]) -> None:
    """Put, snapshot, restore, reserve-and-delete on the real machine."""
    names = [tube_name(tube_of(i, figures.tubes)) for i in range(figures.jobs)]
    machine = JobStateMachine(MachineConfig(max_job_size=65535))
    apply = machine.apply
    times: dict[str, float] = {}
    gc.collect()
    rss_before = vm_rss_bytes()
    with stopwatch(times, "put"):
        for i in range(figures.jobs):
            apply(Put(names[i], PRIORITY, 0, TTR_MS, bodies[i]), NOW_MS)
    figures.put_s = times["put"]
    gc.collect()
    figures.put_rss_bytes = vm_rss_bytes() - rss_before
    figures.body_header_bytes = sys.getsizeof(bodies[0]) - len(bodies[0])
    del names

    with stopwatch(times, "snapshot"):
        data = machine.snapshot()
    figures.snapshot_s, figures.snapshot_bytes = times["snapshot"], len(data)
    with stopwatch(times, "restore"):
        restored = JobStateMachine.restore(data)
    figures.restore_s = times["restore"]
    del restored, data
    gc.collect()

    apply(Connect("bench", "bench-proxy"), NOW_MS)
    for t in range(figures.tubes):
        apply(Watch("bench", tube_name(t)), NOW_MS)
    with stopwatch(times, "reserve-delete"):
        for _ in range(figures.jobs):
            reply = apply(Reserve("bench", 0), NOW_MS).reply
            assert isinstance(reply, Reserved), reply
            apply(Delete("bench", reply.job_id), NOW_MS)
    figures.reserve_delete_s = times["reserve-delete"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_lines(sock: socket.socket, count: int, pending: bytes) -> bytes:
    """Read until ``count`` CRLF-terminated replies arrived; return what is left over."""
    buffer = pending
    while buffer.count(b"\r\n") < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("beanstalkd closed the connection")
        buffer += chunk
    replies = buffer.split(b"\r\n")
    for reply in replies[:count]:
        if not (reply.startswith(b"INSERTED") or reply.startswith(b"USING")):
            raise RuntimeError(f"beanstalkd replied {reply!r}; expected INSERTED or USING")
    return b"\r\n".join(replies[count:])


def fill_beanstalkd(port: int, figures: Figures, bodies: list[bytes]) -> None:
    """The same jobs as the machine got: BATCH puts per write, one tube per batch."""
    ttr_s = TTR_MS // 1000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        for start in range(0, figures.jobs, BATCH):
            stop = min(start + BATCH, figures.jobs)
            parts = [b"use %s\r\n" % tube_name(tube_of(start, figures.tubes)).encode()]
            for i in range(start, stop):
                body = bodies[i]
                parts.append(b"put %d 0 %d %d\r\n%s\r\n" % (PRIORITY, ttr_s, len(body), body))
            sock.sendall(b"".join(parts))
            pending = read_lines(sock, stop - start + 1, pending)


def bench_beanstalkd(figures: Figures, bodies: list[bytes]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [BEANSTALKD, "-l", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        rss_before = vm_rss_bytes(server.pid)
        start = time.perf_counter()
        fill_beanstalkd(port, figures, bodies)
        figures.beanstalkd_put_s = time.perf_counter() - start
        time.sleep(0.2)  # let the server finish its last writes before reading its RSS
        figures.beanstalkd_rss_bytes = vm_rss_bytes(server.pid) - rss_before
    finally:
        server.terminate()
        server.wait(timeout=10)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(figures: Figures, body_size: int) -> None:
    n = figures.jobs
    put_rate = n / figures.put_s
    pair_rate = n / figures.reserve_delete_s
    print(f"jobs: {n:,} of {body_size} bytes over {figures.tubes} tubes")
    print(
        f"put:                {put_rate:12,.0f} ops/s   ({figures.put_s:.2f} s)   "
        f"target >= {TARGET_OPS_PER_S:,}: {verdict(put_rate >= TARGET_OPS_PER_S)}"
    )
    print(
        f"reserve-and-delete: {pair_rate:12,.0f} pairs/s ({figures.reserve_delete_s:.2f} s; "
        f"{2 * pair_rate:,.0f} applies/s)   target >= {TARGET_OPS_PER_S:,} pairs/s: "
        f"{verdict(pair_rate >= TARGET_OPS_PER_S)}"
    )
    per_job = figures.machine_bytes_per_job
    print(
        f"memory per job beyond its body: {per_job:,.1f} bytes "
        f"(RSS +{figures.put_rss_bytes / 2**20:,.1f} MiB over the put phase, "
        f"+{figures.body_header_bytes} bytes of bytes-object header per body)"
    )
    if figures.beanstalkd_rss_bytes is not None and figures.beanstalkd_put_s is not None:
        theirs = figures.beanstalkd_rss_bytes / n - body_size
        ratio = per_job / theirs
        print(
            f"beanstalkd 1.12 memory per job beyond its body: {theirs:,.1f} bytes "
            f"(RSS +{figures.beanstalkd_rss_bytes / 2**20:,.1f} MiB; pipelined fill "
            f"{n / figures.beanstalkd_put_s:,.0f} puts/s)"
        )
        print(
            f"memory ratio machine/beanstalkd: {ratio:.2f}x   "
            f"target <= {TARGET_MEMORY_RATIO:.1f}x: {verdict(ratio <= TARGET_MEMORY_RATIO)}"
        )
    print(
        f"snapshot: {figures.snapshot_s:.2f} s ({figures.snapshot_bytes / 2**20:,.1f} MiB)   "
        f"target < {TARGET_SNAPSHOT_S:.0f} s: {verdict(figures.snapshot_s < TARGET_SNAPSHOT_S)}"
    )
    print(
        f"restore:  {figures.restore_s:.2f} s   "
        f"target < {TARGET_SNAPSHOT_S:.0f} s: {verdict(figures.restore_s < TARGET_SNAPSHOT_S)}"
    )


def describe_host() -> None:
    affinity = len(os.sched_getaffinity(0))
    print(f"platform: {platform.platform()}  machine: {platform.machine()}")
    print(f"processor: {cpu_model()}")
    print(f"cpus: {os.cpu_count()} (this process may run on {affinity})")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to put (1,000,000)")
    parser.add_argument("--tubes", type=int, default=100, help="tubes to spread them over")
    parser.add_argument("--body-size", type=int, default=100, help="bytes per body")
    parser.add_argument(
        "--skip-beanstalkd", action="store_true", help="do not measure beanstalkd 1.12"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    describe_host()
    figures = Figures(jobs=args.jobs, tubes=args.tubes)
    bodies = make_bodies(args.jobs, args.body_size)
    bench_machine(figures, bodies)
    if args.skip_beanstalkd:
        pass
    elif shutil.which(BEANSTALKD) is None:
        print(f"beanstalkd not found at {BEANSTALKD}: install beanstalkd 1.12 to compare")
    else:
        bench_beanstalkd(figures, bodies)
    report(figures, args.body_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
