"""Lazy-deletion heaps of int keys: what makes an entry valid, and compaction.

Theory of operation: every heap in the machine holds ints ``major << KEY_SHIFT | minor`` (see
``statemachine.jobs``). Removing an entry from the middle of a heap is O(n), so the machine
never does: when a job or wait leaves by another way than "pop the top", its entry stays and
goes stale. Readers of a heap top drop stale entries (the ``*_valid`` rules below).

Stale entries below the top would otherwise pile up (a reserve-and-delete loop leaves one TTR
entry per job until its TTR would have passed: millions at 100,000 ops/s), so when a heap holds
more than twice its live entries plus ``COMPACTION_SLACK``, it is rebuilt from its valid entries
(deduplicated and sorted, which is a valid heap). Rebuilding costs O(n) once per O(n)
removals. Heap layout is never observable: tops are the unique valid minimum, and snapshots
hold no heaps, so compaction cannot make replicas diverge.
"""

from __future__ import annotations

from collections.abc import Callable

from statemachine.jobs import DELAYED, ID_MASK, KEY_SHIFT, READY, RESERVED, Job
from statemachine.sessions import Client

COMPACTION_SLACK = 1024

JobRule = Callable[[dict[int, Job], int], bool]
WaitRule = Callable[[dict[int, Client], int], bool]


def needs_compaction(heap: list[int], live: int) -> bool:
    return len(heap) > 2 * live + COMPACTION_SLACK


def ready_valid(jobs: dict[int, Job], key: int) -> bool:
    """A ready-heap entry (priority, id): the job is ready with that priority."""
    job = jobs.get(key & ID_MASK)
    return job is not None and job.state == READY and job.priority == key >> KEY_SHIFT


def delayed_valid(jobs: dict[int, Job], key: int) -> bool:
    """A delay entry (ready time, id): the job is delayed until that time."""
    job = jobs.get(key & ID_MASK)
    return job is not None and job.state == DELAYED and job.deadline_ms == key >> KEY_SHIFT


def ttr_valid(jobs: dict[int, Job], key: int) -> bool:
    """A TTR entry (deadline, id): the job is reserved with that deadline."""
    job = jobs.get(key & ID_MASK)
    return job is not None and job.state == RESERVED and job.deadline_ms == key >> KEY_SHIFT


def wait_valid(waiting: dict[int, Client], key: int) -> bool:
    """A wait entry (deadline, seq): that wait is still going on (seqs are never reused)."""
    return (key & ID_MASK) in waiting


def soon_valid(waiting: dict[int, Client], key: int) -> bool:
    """A deadline-soon entry (instant, seq): the wait goes on and its instant is still that."""
    client = waiting.get(key & ID_MASK)
    return client is not None and client.soon_ms() == key >> KEY_SHIFT


def compact_jobs(heap: list[int], jobs: dict[int, Job], valid: JobRule) -> None:
    heap[:] = sorted({key for key in heap if valid(jobs, key)})


def compact_waits(heap: list[int], waiting: dict[int, Client], valid: WaitRule) -> None:
    heap[:] = sorted({key for key in heap if valid(waiting, key)})
