"""One harness run: a cluster, the workload, a schedule of faults, the heal, the drain, and
the report."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

from .checker import Report, check
from .cluster import NemesisCluster
from .schedule import Applied, Fault, Nemesis
from .workload import Workload, drain

WARM_UP_S = 3.0
SETTLE_S = 60.0


def run(
    faults: list[Fault],
    seed: int,
    nodes: int = 3,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[Report, list[Applied]]:
    cluster = NemesisCluster(size=nodes)
    say(f"nemesis: seed {seed}, {len(faults)} faults, {nodes} nodes, in {cluster.root}")
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus"
    say(f"nemesis: machine {machine}, python {platform.python_version()}")
    try:
        cluster.start()
        workload = Workload([proxy.port for proxy in cluster.proxies])
        workload.start()
        time.sleep(WARM_UP_S)
        nemesis = Nemesis(cluster, seed)
        for i, fault in enumerate(faults, 1):
            record = nemesis.apply(fault)
            nemesis.recover(record)
            notes = [*record.notes, f"caught up {record.caught_up_s:.1f} s after the heal"]
            if record.dropped_packets:
                notes.append(f"{record.dropped_packets} packets dropped")
            say(
                f"nemesis: [{i}/{len(faults)}] {fault.kind} on {','.join(record.targets)} for "
                f"{fault.duration_s:.1f} s" + (f" ({'; '.join(notes)})" if notes else "")
            )
            time.sleep(fault.gap_s)
        healed_at = time.monotonic()
        writes_s = _first_ack_after(workload, healed_at)
        caught_up_s = _caught_up(cluster, healed_at)
        workload.stop()
        say("nemesis: healed; draining the queue")
        drained = drain(cluster.proxies[0].port, workload.history)
        report = check(workload.history, drained, nemesis.applied)
        report.replicas_equal, report.digests = _equal(cluster)
        report.writes_after_heal_s = writes_s
        report.equal_after_heal_s = caught_up_s
        return report, nemesis.applied
    finally:
        cluster.close(keep=keep)
        if keep:
            say(f"nemesis: logs and data kept in {cluster.root}")


def _first_ack_after(workload: Workload, since: float, limit_s: float = SETTLE_S) -> float:
    give_up = since + limit_s
    while time.monotonic() < give_up:
        with workload.history.lock:
            later = [t for t in workload.history.ack_times if t >= since]
        if later:
            return min(later) - since
        time.sleep(0.05)
    return -1.0


def _caught_up(cluster: NemesisCluster, since: float, limit_s: float = SETTLE_S) -> float:
    """How long after ``since`` every node had applied what was committed at ``since`` (the
    workload keeps writing meanwhile; equality is checked once it stops)."""
    give_up = since + limit_s
    target = 0
    while time.monotonic() < give_up:
        views = [cluster.status(node) for node in cluster.nodes]
        target = target or max((v.commit_index for v in views if v is not None), default=0)
        if target and all(v is not None and v.applied_index >= target for v in views):
            return time.monotonic() - since
        time.sleep(0.05)
    return -1.0


def _equal(
    cluster: NemesisCluster, limit_s: float = 30.0
) -> tuple[bool, dict[str, tuple[int, str]]]:
    """Whether every node holds the same snapshot at the same applied index, once nothing but
    the odd tick writes. Snapshots are taken only when every node reports the same applied
    index (each stops a node's applies while it is taken: taken over and over, a large one
    would start elections), and again if an entry landed between them."""
    give_up = time.monotonic() + limit_s
    digests: dict[str, tuple[int, str]] = {}
    while time.monotonic() < give_up:
        views = [cluster.status(node) for node in cluster.nodes]
        if len({v.applied_index for v in views if v is not None}) != 1 or None in views:
            time.sleep(0.2)
            continue
        digests = cluster.digests()
        if len(digests) == len(cluster.nodes) and len({i for i, _ in digests.values()}) == 1:
            return len(set(digests.values())) == 1, digests
        time.sleep(0.5)
    return False, digests
