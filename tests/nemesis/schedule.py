"""Seeded fault schedules, and applying each fault to a running cluster.

A schedule is a list of faults, each held for its duration and then healed, with a quiet gap
before the next. The same seed gives the same schedule; targets ("the leader", "a follower",
"a random minority") are resolved when the fault starts, from the seeded random source too.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .cluster import NemesisCluster, Node

KINDS = (
    "kill_leader",
    "kill_follower",
    "pause_leader",
    "pause_follower",
    "partition_leader",
    "partition_follower",
    "partition_random",
    "kill_all",
    "disk_full_follower",
    "disk_full_leader",
    "torn_tail",
    "corrupt_tail",
)
SHORT = (  # one of each kind that the targets name, for CI
    "kill_leader",
    "pause_leader",
    "partition_leader",
    "partition_follower",
    "partition_random",
    "disk_full_follower",
    "torn_tail",
    "corrupt_tail",
    "kill_all",
)


@dataclass(frozen=True)
class Fault:
    kind: str
    duration_s: float
    gap_s: float


@dataclass
class Applied:
    kind: str
    targets: list[str]
    started: float
    healed: float = 0.0
    caught_up_s: float = -1.0  # after the heal, until every node applied what was committed
    dropped_packets: int = 0
    notes: list[str] = field(default_factory=list)


def generate(
    seed: int,
    count: int,
    kinds: tuple[str, ...] = KINDS,
    duration_s: tuple[float, float] = (4.0, 10.0),
    gap_s: float = 6.0,
) -> list[Fault]:
    rng = random.Random(seed)
    return [
        Fault(rng.choice(kinds), round(rng.uniform(*duration_s), 1), gap_s) for _ in range(count)
    ]


def in_order(kinds: tuple[str, ...], duration_s: float = 6.0, gap_s: float = 6.0) -> list[Fault]:
    return [Fault(kind, duration_s, gap_s) for kind in kinds]


class Nemesis:
    def __init__(self, cluster: NemesisCluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.applied: list[Applied] = []

    def run(self, faults: list[Fault]) -> None:
        for fault in faults:
            self.recover(self.apply(fault))
            time.sleep(fault.gap_s)

    def recover(self, record: Applied, limit_s: float = 60.0) -> None:
        """Wait until every node applied what was committed at the heal, so that the next
        fault meets a whole cluster (one fault at a time: the targets are per fault)."""
        give_up = record.healed + limit_s
        target = 0
        while time.monotonic() < give_up:
            views = [self.cluster.status(node) for node in self.cluster.nodes]
            target = target or max((v.commit_index for v in views if v is not None), default=0)
            if target and all(v is not None and v.applied_index >= target for v in views):
                record.caught_up_s = time.monotonic() - record.healed
                return
            time.sleep(0.1)

    def _leader(self) -> Node:
        leader = self.cluster.leader()
        if leader is None:  # between leaders: any running node will do
            leader = self.rng.choice([n for n in self.cluster.nodes if n.running])
        return leader

    def _follower(self) -> Node:
        leader = self.cluster.leader()
        others = [n for n in self.cluster.nodes if n is not leader and n.running]
        return self.rng.choice(others)

    def apply(self, fault: Fault) -> Applied:
        kind = fault.kind
        target = self._leader() if kind.endswith("_leader") else self._follower()
        record = Applied(kind, [target.name], time.monotonic())
        self.applied.append(record)
        if kind in ("kill_leader", "kill_follower"):
            target.kill()
            time.sleep(fault.duration_s)
            target.start()
        elif kind in ("pause_leader", "pause_follower"):
            target.pause()
            time.sleep(fault.duration_s)
            target.resume()
        elif kind in ("partition_leader", "partition_follower"):
            self._partition([target.name], fault.duration_s, record)
        elif kind == "partition_random":
            names = [n.name for n in self.cluster.nodes]
            side = self.rng.sample(names, self.rng.randint(1, len(names) // 2))
            record.targets = side
            self._partition(side, fault.duration_s, record)
        elif kind == "kill_all":
            record.targets = [n.name for n in self.cluster.nodes]
            for node in self.cluster.nodes:
                node.kill()
            time.sleep(fault.duration_s)
            for node in self.cluster.nodes:
                node.start()
        elif kind in ("disk_full_follower", "disk_full_leader"):
            taken = target.disk.fill()
            record.notes.append(f"filled {taken >> 10} KiB")
            time.sleep(fault.duration_s)
            target.disk.free()
        elif kind in ("torn_tail", "corrupt_tail"):
            target.kill()
            if kind == "torn_tail":
                target.tear_journal_tail()
            else:
                target.corrupt_journal_tail()
            time.sleep(fault.duration_s)
            target.start()
        else:
            raise ValueError(f"unknown fault {kind!r}: choose from {', '.join(KINDS)}")
        record.healed = time.monotonic()
        return record

    def _partition(self, side: list[str], duration_s: float, record: Applied) -> None:
        firewall = self.cluster.firewall
        assert firewall is not None
        firewall.split(side)
        time.sleep(duration_s)
        record.dropped_packets = firewall.dropped_packets()
        firewall.heal()
