"""Prometheus metrics of one node, served on ``--metrics-addr`` (off by default).

Commit latency (proposal to applied on the leader, per log entry), applied index, Raft term,
leadership changes seen by this node, and jobs by state (read from the stats the machine keeps,
in a tick, between two applies, when scraped at most once a second).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cluster.node import RaftNode


class NodeMetrics:
    def __init__(self, node: RaftNode) -> None:
        self.registry = CollectorRegistry()
        self.commit_latency = Histogram(
            "beanraft_commit_latency_seconds",
            "Time from proposing a log entry to its apply on the leader",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.leader_changes = Counter(
            "beanraft_leader_changes_total",
            "Raft state changes into or out of leadership seen by this node",
            registry=self.registry,
        )
        applied = Gauge("beanraft_applied_index", "Last applied Raft index", registry=self.registry)
        applied.set_function(lambda: float(node.syncobj.raftLastApplied))
        term = Gauge("beanraft_raft_term", "Current Raft term", registry=self.registry)
        term.set_function(lambda: float(node.syncobj.raftCurrentTerm))
        leader = Gauge("beanraft_is_leader", "1 if this node leads", registry=self.registry)
        leader.set_function(lambda: 1.0 if node.is_leader() else 0.0)
        self.jobs = Gauge("beanraft_jobs", "Jobs by state", ["state"], registry=self.registry)
        self._node = node
        self._jobs_read_at = 0.0

    def observe_state_change(self, old: int, new: int) -> None:
        if 2 in (old, new):
            self.leader_changes.inc()

    def refresh_jobs(self) -> None:
        """Called in a tick (between two applies): copy the machine's job counts into the gauge."""
        now = time.monotonic()
        if now - self._jobs_read_at < 1.0:
            return
        self._jobs_read_at = now
        for state, count in job_counts(self._node.state.machine).items():
            self.jobs.labels(state=state).set(count)

    def serve(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=self.registry)


def job_counts(machine: Any) -> dict[str, int]:
    """Jobs by state, summed from the per-tube counts the machine keeps for stats-tube.

    Read-only (applying a Stats command would count as a client's ``stats``); called in a
    tick, so the machine is between two applies. Costs one pass over the tubes."""
    tubes = getattr(getattr(machine, "_state", None), "tube_order", None)
    if tubes is None:
        return {}
    return {
        "ready": sum(t.ready_count for t in tubes),
        "reserved": sum(t.reserved_count for t in tubes),
        "delayed": sum(t.delayed_count for t in tubes),
        "buried": sum(len(t.buried) for t in tubes),
    }
