"""Failover on the direct path: the leader of a ``beanraft up`` cluster paused, clients on
every node's own beanstalkd listener.

    .venv/bin/python -m bench.direct_failover [--rounds 4] [--pause-s 4]

Starts ``beanraft up --nodes 3`` in a temporary directory, runs one putting client (greenstalk,
one put at a time) on each node's listener, and in each round pauses the current leader with
SIGSTOP for ``--pause-s``, resumes it and lets the cluster settle. Prints, per round, the longest
gap between acknowledged puts on each listener. The paused node's own listener cannot answer
until it resumes (its clients wait the whole pause: a client of a stopped server); the target
(issue 17: failover under 2 s) is for the clients of the other nodes, whose forwards to the
stopped leader must move to the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

import greenstalk

from bench.proxy_bench import _free_port

BIN = Path(sys.executable).parent / "beanraft"


class Putter(threading.Thread):
    """Puts one job at a time on one listener, reconnecting on any error; records when each
    put was acknowledged."""

    def __init__(self, name: str, addr: str) -> None:
        super().__init__(daemon=True)
        self.name, self.addr = name, addr
        self.acks: list[float] = []
        self.stopping = False

    def run(self) -> None:
        host, port = self.addr.rsplit(":", 1)
        while not self.stopping:
            try:
                with greenstalk.Client((host, int(port)), use="failover") as client:
                    while not self.stopping:
                        client.put(b"x")
                        self.acks.append(time.monotonic())
            except (OSError, greenstalk.Error):
                time.sleep(0.05)

    def longest_gap_s(self, start: float, end: float) -> float:
        acks = [t for t in self.acks if start <= t <= end]
        return max((b - a for a, b in pairwise(acks)), default=end - start)


def _status(data: Path, up: dict) -> dict:  # type: ignore[type-arg]
    grpc_addrs = ",".join(node["grpc_addr"] for node in up["nodes"])
    argv = [str(BIN), "cluster", "status", "--json", "--cluster", grpc_addrs]
    argv += ["--tls-dir", str(data / "tls")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _leader(data: Path, up: dict) -> str:  # type: ignore[type-arg]
    for _ in range(60):
        try:
            for node in _status(data, up).values():
                if isinstance(node, dict) and node.get("is_leader"):
                    return str(node["node_id"])
        except (subprocess.SubprocessError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise SystemExit("no leader within 30 s")


def _pid(data: Path, node_id: str) -> int:
    pattern = f"--node-id {node_id} --data-dir {data}/node-{node_id} "
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause-s", type=float, default=4.0)
    args = parser.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="beanraft-failover-") as tmp:
        data = Path(tmp) / "up"
        listen = f"127.0.0.1:{_free_port()}"
        argv = [str(BIN), "up", "--nodes", "3", "--listen", listen, "--data-dir", str(data)]
        with open(Path(tmp) / "up.log", "wb") as log:
            up_proc = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            return _run(data, args.rounds, args.pause_s)
        finally:
            up_proc.send_signal(signal.SIGINT)
            up_proc.wait(60)


def _run(data: Path, rounds: int, pause_s: float) -> int:
    for _ in range(240):
        if (data / "up.json").exists():
            break
        time.sleep(0.5)
    up = json.loads((data / "up.json").read_text())
    _leader(data, up)
    putters = [Putter(node["node_id"], node["beanstalkd_addr"]) for node in up["nodes"]]
    for putter in putters:
        putter.start()
    time.sleep(3)
    worst_s = 0.0
    for number in range(rounds):
        leader = _leader(data, up)
        pid = _pid(data, leader)
        start = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(pause_s)
        os.kill(pid, signal.SIGCONT)
        time.sleep(5)
        end = time.monotonic()
        gaps = []
        for putter in putters:
            gap_s = putter.longest_gap_s(start - 1, end)
            paused = putter.name == leader
            gaps.append(f"n{putter.name}{' (paused)' if paused else ''} {gap_s:.2f} s")
            if not paused:
                worst_s = max(worst_s, gap_s)
        print(
            f"round {number}: leader n{leader} paused {pause_s:.0f} s; longest gap in puts: "
            + ", ".join(gaps),
            flush=True,
        )
    for putter in putters:
        putter.stopping = True
    print(f"worst gap on the other nodes' listeners: {worst_s:.2f} s (target < 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
