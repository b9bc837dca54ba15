"""Job records on a node: a spec's summary for a record, and reads of this replica's records.

Reads do not go through the log (unlike the queue's peeks and stats): a job's status is a view
of replicated state that every node holds, and a status change reaches every node with the
entry that makes it, within milliseconds. They do not stop the applying thread either: a record
is an immutable value replaced on change, and the job's place is read before its record, so a
job that left the queue after its worker's end report is never mistaken for one deleted
without a report (the report's entry came first; see ``view``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from cluster.jobspec import JobSpec
from jobqueue.errors import BeanraftError
from statemachine.machine import JobStateMachine
from statemachine.records import JobRecord, JobSummary, RecordView, derive

T = TypeVar("T")
MOVING_RETRIES = 200
MOVING_PAUSE_S = 0.0005


def summary_of(spec: JobSpec) -> JobSummary:
    """What a record keeps of ``spec`` (limits not set are 0 or "")."""
    limits = spec.limits
    return JobSummary(
        command=spec.command,
        args=spec.args,
        max_cpu=limits.cpu_percent or 0,
        max_memory_mb=limits.memory_mb or 0,
        max_iobps=limits.io_bps or 0,
        cpu_cores=limits.cpu_cores or "",
        pids=limits.pids,
        timeout_s=spec.timeout_s,
        network=spec.network,
        workdir=spec.workdir,
        env=tuple(f"{name}={value}" for name, value in spec.env),
        max_retries=spec.retry.max_retries,
    )


class RecordUnavailable(BeanraftError):
    """The job was in the middle of a move for longer than a read waits (never, in practice)."""


def view_now(
    machine: JobStateMachine, job_id: int, record: JobRecord | None = None
) -> RecordView | None:
    """The record of ``job_id`` with its status, read from another thread than the applier.
    ``record``, when given, is a copy taken earlier (a listing's)."""
    for _ in range(MOVING_RETRIES):
        place = machine.job_place(job_id)
        if place is None:  # an apply is moving it right now
            time.sleep(MOVING_PAUSE_S)
            continue
        if record is None or (not place and not record.final_status):
            # Read after the place: an end report that settled the record came before the
            # delete that took the job out of the queue.
            record = machine.record_of(job_id)
        return None if record is None else derive(record, place)
    raise RecordUnavailable(f"job {job_id} stayed in the middle of a move")


def list_now(
    machine: JobStateMachine, statuses: frozenset[str], after_id: int, limit: int
) -> tuple[list[RecordView], int]:
    """Records after ``after_id`` in job id order, filtered by status, at most ``limit`` (0:
    all), and the id to continue after (0: no more)."""
    records = sorted(machine.all_records(), key=_job_id)
    found: list[RecordView] = []
    for record in records:
        if record.job_id <= after_id:
            continue
        shown = view_now(machine, record.job_id, record)
        if shown is None or (statuses and shown.status not in statuses):
            continue
        if limit and len(found) == limit:
            return found, found[-1].job_id
        found.append(shown)
    return found, 0


def _job_id(record: JobRecord) -> int:
    return record.job_id


async def off_loop(fn: Callable[[], T]) -> T:
    """Run a read that may take a while (a listing of 100,000 records) off the event loop."""
    return await asyncio.to_thread(fn)
