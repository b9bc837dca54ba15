"""Tubes: each holds a ready heap, a delayed heap and a buried FIFO, plus its counters.

Theory of operation (as beanstalkd 1.12): a tube orders its ready jobs by (priority,
id), its delayed jobs by (ready time, id), and its buried jobs oldest-buried first. Reserved
jobs live with their holder; the tube only counts them.

- ``ready`` and ``delayed`` are heaps of int keys (see ``statemachine.jobs``) with lazy
  deletion: a job that leaves by any way other than "pop the valid top" leaves a stale entry,
  dropped when it reaches the top. Counts (``ready_count``, ``urgent_count``,
  ``delayed_count``) are kept exactly, apart from the heaps. Every job in a state has at least
  one valid entry, so a non-zero count means the top can be found.
- ``top`` caches the best valid ready key (-1: look it up), because a reserve compares the
  tops of every watched tube and must not walk each heap's stale entries every time.
- ``buried`` is an ``OrderedDict`` (id -> job): O(1) append, removal from the middle (delete,
  kick-job, reserve-job) and removal of the oldest (kick).
- ``waiters`` are the waiting clients watching the tube, by arrival number, earliest first.
- A tube exists while a job, a using client or a watching client refers to it; ``default``
  always exists (``is_referenced``). ``slot`` is its index in the machine's list-tubes order.
- ``pause_until_ms`` is None when not paused; ``pause_ms`` the pause's length (stats ``pause``).
"""

from __future__ import annotations

from collections import OrderedDict
from heapq import heappop
from typing import TYPE_CHECKING

from statemachine.jobs import DELAYED, ID_MASK, KEY_SHIFT, READY, Job
from statemachine.limits import DEFAULT_TUBE

if TYPE_CHECKING:
    from statemachine.sessions import Client


class Tube:
    """One tube's jobs, waiters and counters."""

    __slots__ = (
        "buried",
        "cmd_delete",
        "cmd_pause_tube",
        "delayed",
        "delayed_count",
        "name",
        "pause_ms",
        "pause_until_ms",
        "ready",
        "ready_count",
        "reserved_count",
        "slot",
        "top",
        "total_jobs",
        "urgent_count",
        "using_count",
        "waiters",
        "watching_count",
    )

    def __init__(self, name: str, slot: int) -> None:
        self.name = name
        self.slot = slot
        self.ready: list[int] = []
        self.ready_count = 0
        self.top = -1  # the best ready key when known, -1 when it must be looked up
        self.urgent_count = 0
        self.delayed: list[int] = []
        self.delayed_count = 0
        self.buried: OrderedDict[int, Job] = OrderedDict()
        self.reserved_count = 0
        self.total_jobs = 0
        self.cmd_delete = 0
        self.cmd_pause_tube = 0
        self.pause_ms = 0
        self.pause_until_ms: int | None = None
        self.using_count = 0
        self.watching_count = 0
        self.waiters: OrderedDict[int, Client] = OrderedDict()

    def job_count(self) -> int:
        return self.ready_count + self.delayed_count + len(self.buried) + self.reserved_count

    def is_referenced(self) -> bool:
        return bool(
            self.name == DEFAULT_TUBE or self.using_count or self.watching_count or self.job_count()
        )

    def top_ready_key(self, jobs: dict[int, Job]) -> int:
        """The (priority, id) key of the best ready job. Requires ``ready_count > 0``."""
        if self.top >= 0:
            return self.top
        heap = self.ready
        while True:
            key = heap[0]
            job = jobs.get(key & ID_MASK)
            if job is not None and job.state == READY and job.priority == key >> KEY_SHIFT:
                self.top = key
                return key
            heappop(heap)

    def top_delayed_key(self, jobs: dict[int, Job]) -> int:
        """The (ready time, id) key of the soonest delayed job. Requires ``delayed_count > 0``."""
        heap = self.delayed
        while True:
            key = heap[0]
            job = jobs.get(key & ID_MASK)
            if job is not None and job.state == DELAYED and job.deadline_ms == key >> KEY_SHIFT:
                return key
            heappop(heap)

    def oldest_buried(self) -> Job | None:
        return next(iter(self.buried.values()), None)

    def add_waiter(self, client: Client) -> None:
        """Add a waiting client, keeping the waiters in arrival order (a client that watches
        this tube while already waiting may have arrived before the others)."""
        seq = client.wait_seq
        out_of_order = bool(self.waiters) and next(reversed(self.waiters)) > seq
        self.waiters[seq] = client
        if out_of_order:
            self.waiters = OrderedDict(sorted(self.waiters.items()))

    def __repr__(self) -> str:
        return f"Tube({self.name!r}, ready={self.ready_count}, delayed={self.delayed_count})"
