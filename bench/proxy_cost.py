"""Where a put's cost goes on the way through the proxy and a 3-node cluster.

    .venv/bin/python -m bench.proxy_cost [--puts 16000] [--connections 32] [--rounds 3]
                                         [--workload put|cycle] [--fsync batch|always|never]
                                         [--path proxy|direct|direct-follower]

Issue 4's target is a put rate, and a rate alone does not say what to work on next. This
starts ``beanstalkd -b DIR -f0`` and then a proxy in front of three nodes (both as in
bench/proxy_bench.py), puts with greenstalk on ``--connections`` threads, and prints for each
round: puts/s, Raft log entries and puts per entry (from the leader's commit index), and the
CPU time per put of every process (user + system, from /proc), the load generator included.
``--workload cycle`` does put-reserve-delete cycles instead, and counts per cycle.
On 2 cores, 1,000,000 us of CPU a second is the whole machine: at N puts/s the five processes
can spend at most 2,000,000 / N us per put between them.

``--path direct`` puts on the leader's own listener (``--beanstalkd-listen``, no proxy), and
``direct-follower`` on a follower's (which forwards to the leader); each round then also
prints the servers' summed CPU per put as a multiple of beanstalkd's in the same run (issue
17's target: at most 3, one beanstalkd's work per replica).

``--fsync`` sets the nodes' journal policy (default ``batch``, the nodes' own default): with
``never`` the same run shows what the three replicas' syncs cost, on a machine where they
share one disk. Before the rounds it times ``fdatasync`` of small appends in the directory the
nodes write to, with nothing else running: beanstalkd ``-f0`` pays that once per put, the
cluster about three times per log entry (the leader and each follower).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import grpc

from api import cluster_pb2_grpc, empty_pb2
from bench.proxy_bench import (
    _cycles,
    _parallel,
    _puts,
    beanstalkd,
    cluster_processes,
    direct_processes,
    machine,
)
from cluster.durability import POLICIES

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status(addr: str) -> tuple[bool, int]:
    """(is this node the leader, its commit index)."""
    with grpc.insecure_channel(addr) as channel:
        status = cluster_pb2_grpc.ClusterStub(channel).Status(empty_pb2.Empty(), timeout=5)
    return status.is_leader, status.commit_index


def _commit_index(addrs: list[str]) -> int:
    return max(_status(addr)[1] for addr in addrs)


def _roles(addrs: list[str], pids: dict[str, int]) -> dict[str, int]:
    """Pids by role: proxy (when there is one), leader, follower 1, follower 2."""
    leading = [_status(addr)[0] for addr in addrs]
    nodes = [pids[f"n{i + 1}"] for i in range(len(addrs))]
    roles = {"proxy": pids["proxy"]} if "proxy" in pids else {}
    roles["leader"] = nodes[leading.index(True)]
    followers = [pid for pid, leads in zip(nodes, leading, strict=True) if not leads]
    roles |= {f"follower {n + 1}": pid for n, pid in enumerate(followers)}
    return roles


WORKLOADS = {"put": _puts, "cycle": _cycles}


def _round(
    port: int, connections: int, count: int, pids: dict[str, int], workload: str = "put"
) -> tuple[float, dict[str, float]]:
    """One measured run: (puts or cycles a second, CPU us per put or cycle by process name,
    "client" included)."""
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    client_before = _own_cpu_s()
    rate = _parallel(port, connections, count, WORKLOADS[workload])
    done = count // connections * connections
    cost = {name: (_cpu_s(pid) - before[name]) / done * 1e6 for name, pid in pids.items()}
    cost["client"] = (_own_cpu_s() - client_before) / done * 1e6
    return rate, cost


def _print(
    label: str, rate: float, cost: dict[str, float], extra: str = "", unit: str = "put"
) -> None:
    total = sum(cost.values())
    parts = ", ".join(f"{name} {us:.0f}" for name, us in cost.items())
    print(
        f"{label}: {rate:7,.0f} {unit}s/s{extra}; CPU per {unit} (us): {parts}; "
        f"total {total:.0f} = {total * rate / 1e6:.2f} cores",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=16000, help="puts or cycles per round")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="put")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync", choices=POLICIES, default="batch", help="the nodes' policy")
    parser.add_argument(
        "--path", choices=sorted(PATHS), default="proxy", help="how clients connect"
    )
    args = parser.parse_args()
    print(machine())
    print(f"disk, idle: fdatasync of a 1 KiB append takes {_sync_p50_us():.0f} us at p50")
    with beanstalkd("-b", "DIR", "-f0") as port:
        # beanstalkd() does not hand out its pid: find it by its port on the command line.
        pid = _pid_listening(port)
        _parallel(port, args.connections, args.puts // 4, _puts)  # warm up
        reference_us = []
        for n in range(args.rounds):
            pids = {"beanstalkd": pid}
            rate, cost = _round(port, args.connections, args.puts, pids, args.workload)
            _print(f"beanstalkd -b -f0, round {n + 1}", rate, cost, unit=args.workload)
            reference_us.append(cost["beanstalkd"])
    beanstalkd_us = sorted(reference_us)[len(reference_us) // 2]
    with PATHS[args.path](args.fsync) as (port, addrs, pids):
        _parallel(port, args.connections, args.puts // 4, _puts)  # warm up; a leader is settled
        roles = _roles(addrs, pids)
        for n in range(args.rounds):
            first = _commit_index(addrs)
            rate, cost = _round(port, args.connections, args.puts, roles, args.workload)
            entries = max(1, _commit_index(addrs) - first)
            commands = args.puts * (3 if args.workload == "cycle" else 1)
            servers_us = sum(us for name, us in cost.items() if name != "client")
            extra = (
                f", {entries} log entries, {commands / entries:.1f} commands per entry; servers "
                f"{servers_us / beanstalkd_us:.2f}x beanstalkd's CPU per {args.workload}"
            )
            label = f"{LABELS[args.path]} (--fsync {args.fsync}), round {n + 1}"
            _print(label, rate, cost, extra, args.workload)
    return 0


PATHS = {
    "proxy": cluster_processes,
    "direct": direct_processes,
    "direct-follower": lambda fsync: direct_processes(fsync, on="follower"),
}
LABELS = {
    "proxy": "proxy + 3-node cluster",
    "direct": "3-node cluster, the leader's listener",
    "direct-follower": "3-node cluster, a follower's listener",
}


def _sync_p50_us(appends: int = 300) -> float:
    """Median time of ``fdatasync`` after a 1 KiB append to a new file, in the temporary
    directory the benchmark's nodes and beanstalkd write to."""
    record = os.urandom(1024)
    times_s = []
    with tempfile.TemporaryFile() as f:
        for _ in range(appends):
            os.write(f.fileno(), record)
            start_s = time.perf_counter()
            os.fdatasync(f.fileno())
            times_s.append(time.perf_counter() - start_s)
    return sorted(times_s)[appends // 2] * 1e6


def _pid_listening(port: int) -> int:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"beanstalkd") and str(port).encode() in argv:
            return int(name)
    raise RuntimeError(f"no beanstalkd process found for port {port}")


if __name__ == "__main__":
    raise SystemExit(main())
