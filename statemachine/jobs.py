"""Jobs: one small object per job, and the integer keys that order them.

Theory of operation: a job is a ``Job`` with ``__slots__`` (no per-job dict: a million jobs must
fit in about twice beanstalkd's memory). It is in exactly one place at a time, named by
``state``: its tube's ready heap, its tube's delayed heap, its tube's buried FIFO, or its
holder's reserved set. ``deadline_ms`` is the TTR deadline while reserved and the ready time
while delayed, 0 otherwise; ``holder`` is the reserving client while reserved, None otherwise.

Heaps hold plain ints, not tuples: ``key = major << KEY_SHIFT | job_id``, so the heap order is
(major, id) and ties always break by job id, never by object identity or hash order. A heap
entry is only a hint: it is valid while the job still exists and still has the state and major
value the key encodes (lazy deletion). Whoever reads a heap top checks that and drops stale
entries.

Rule: fields hold ints, bytes or references; counters are plain ints starting at 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statemachine.sessions import Client
    from statemachine.tubes import Tube

READY = 0
DELAYED = 1
RESERVED = 2
BURIED = 3
# Between leave_place and enter_*: in no place, so every heap entry of the job is stale.
MOVING = 4
STATE_NAMES = ("ready", "delayed", "reserved", "buried")

KEY_SHIFT = 64
ID_MASK = (1 << KEY_SHIFT) - 1


class Job:
    """One job. See the module docstring for what each field means in each state."""

    __slots__ = (
        "body",
        "buries",
        "created_ms",
        "deadline_ms",
        "delay_ms",
        "holder",
        "id",
        "kicks",
        "priority",
        "releases",
        "reserves",
        "state",
        "timeouts",
        "ttr_ms",
        "tube",
    )

    def __init__(
        self,
        job_id: int,
        tube: Tube,
        priority: int,
        delay_ms: int,
        ttr_ms: int,
        body: bytes,
        created_ms: int,
        state: int = READY,
        deadline_ms: int = 0,
        holder: Client | None = None,
        reserves: int = 0,
        timeouts: int = 0,
        releases: int = 0,
        buries: int = 0,
        kicks: int = 0,
    ) -> None:
        self.id = job_id
        self.tube = tube
        self.priority = priority
        self.delay_ms = delay_ms
        self.ttr_ms = ttr_ms
        self.body = body
        self.created_ms = created_ms
        self.state = state
        self.deadline_ms = deadline_ms
        self.holder = holder
        self.reserves = reserves
        self.timeouts = timeouts
        self.releases = releases
        self.buries = buries
        self.kicks = kicks

    def ready_key(self) -> int:
        """The job's place in its tube's ready heap: (priority, id)."""
        return self.priority << KEY_SHIFT | self.id

    def deadline_key(self) -> int:
        """The job's place in a deadline heap: (deadline_ms, id)."""
        return self.deadline_ms << KEY_SHIFT | self.id

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.tube.name!r}, {STATE_NAMES[self.state]}, pri={self.priority})"
