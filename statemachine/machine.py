"""The replicated job queue: ``JobStateMachine.apply(command, now_ms) -> Outcome``.

Theory of operation: the leader stamps each command with its clock's ``now_ms``; every replica
applies the same (command, now_ms) pairs in the same order and so computes the same outcomes and
holds the same state, byte for byte (``snapshot()``). An apply:

1. clamps time: ``now = max(last now, now_ms)`` (a new leader's clock may be behind);
2. processes every due event in time order (``statemachine.events``): lease expiries, TTR and
   delay expiries, pause ends, matching, reserve timeouts, deadline-soon;
3. dispatches the command (``ops_jobs``, ``ops_sessions``, ``ops_reads``); a command that makes
   a job ready matches waiting reservers before it returns;
4. returns the reply and the ``Wakeup``s (waits answered by steps 2 and 3), as data.

A retry is not this machine's business: the cluster remembers every replicated request's outcome
by request id (``cluster/replicated.py``, the one request window) and answers a retry from it, so
a command that reaches the machine is applied. Here a request id only names a reserve's wait, so
its wake-up finds the reserve that asked.

Rules this machine keeps:
- It never reads a clock, draws a random number, does I/O, starts a thread or logs; it imports
  the standard library's pure modules only (``tests/statemachine/test_tidy``).
- Nothing iterates a set or dict in an order that depends on hashing; ties break by job id or
  wait arrival number; time is integer milliseconds.
- Illegal commands return a typed reply (NotFound, UnknownClient, InvalidArgument, ...) and
  change nothing but, where beanstalkd counts them, a cmd-* counter.
- ``check_invariants()`` asserts that every job is in exactly one place and every count equals
  the size of what it counts; tests call it after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from statemachine import commands as c
from statemachine import ops_jobs, ops_reads, ops_records, ops_sessions
from statemachine.events import advance, next_event_ms
from statemachine.invariants import check_state
from statemachine.jobs import MOVING
from statemachine.limits import DEFAULT_MAX_JOB_SIZE, MAX_JOB_SIZE_LIMIT
from statemachine.records import JobRecord, RecordView
from statemachine.replies import Outcome, Reply
from statemachine.snapshot import decode_state, encode_state
from statemachine.state import State


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """Replicated configuration: every replica must use the same (it is in the snapshot)."""

    max_job_size: int = DEFAULT_MAX_JOB_SIZE

    def __post_init__(self) -> None:
        if not 0 <= self.max_job_size <= MAX_JOB_SIZE_LIMIT:
            raise ValueError(
                f"max_job_size {self.max_job_size} outside 0..{MAX_JOB_SIZE_LIMIT} "
                "(beanstalkd's -z limit); pick a value in range"
            )


Handler = Callable[[State, Any], Reply]

HANDLERS: dict[type, Handler] = {
    c.Connect: ops_sessions.connect,
    c.Disconnect: ops_sessions.disconnect,
    c.RenewLease: ops_sessions.renew_lease,
    c.ExtendLeases: ops_sessions.extend_leases,
    c.DropProxy: ops_sessions.drop_proxy,
    c.Tick: ops_sessions.tick,
    c.Use: ops_sessions.use,
    c.Watch: ops_sessions.watch,
    c.Ignore: ops_sessions.ignore,
    c.ListTubeUsed: ops_sessions.list_tube_used,
    c.ListTubesWatched: ops_sessions.list_tubes_watched,
    c.CheckClients: ops_sessions.check_clients,
    c.Put: ops_jobs.put,
    c.RejectedPut: ops_jobs.rejected_put,
    c.Reserve: ops_jobs.reserve,
    c.ReserveJob: ops_jobs.reserve_job,
    c.Delete: ops_jobs.delete,
    c.Release: ops_jobs.release,
    c.Bury: ops_jobs.bury,
    c.Touch: ops_jobs.touch,
    c.Kick: ops_jobs.kick,
    c.KickJob: ops_jobs.kick_job,
    c.PauseTube: ops_jobs.pause_tube,
    c.Peek: ops_reads.peek,
    c.PeekReady: ops_reads.peek_ready,
    c.PeekDelayed: ops_reads.peek_delayed,
    c.PeekBuried: ops_reads.peek_buried,
    c.StatsJob: ops_reads.stats_job,
    c.StatsTube: ops_reads.stats_tube,
    c.Stats: ops_reads.stats,
    c.ListTubes: ops_reads.list_tubes,
    c.RunJob: ops_records.run_job,
    c.ReportJobStart: ops_records.report_start,
    c.ReportJobEnd: ops_records.report_end,
    c.StopJob: ops_records.stop_job,
    c.SetRecordRetention: ops_records.set_record_retention,
}


class JobStateMachine:
    """The replicated job queue. Deterministic: the same commands with the same timestamps give
    the same outcomes and the same snapshot on every replica."""

    __slots__ = ("_checked_now_ms", "_config", "_state")

    def __init__(self, config: MachineConfig = MachineConfig()) -> None:
        self._config = config
        self._state = State(config.max_job_size)
        self._checked_now_ms = 0

    @property
    def config(self) -> MachineConfig:
        return self._config

    @property
    def now_ms(self) -> int:
        """Machine time: the latest ``now_ms`` applied (never decreases)."""
        return self._state.now_ms

    def apply(self, command: c.Command, now_ms: int) -> Outcome:
        """Apply one command at the leader-stamped time ``now_ms``; see the module docstring."""
        state = self._state
        handler = HANDLERS.get(type(command))
        if handler is None:
            raise TypeError(f"not a state-machine command: {command!r}")
        if type(command) is not c.ExtendLeases:  # it acts before the time that passed
            advance(state, now_ms)
        reply = handler(state, command)
        if state.wakeups:
            wakeups = tuple(state.wakeups)
            state.wakeups.clear()
            return Outcome(reply, wakeups)
        return Outcome(reply)

    def job_record(self, job_id: int) -> RecordView | None:
        """The record of ``job_id`` with its derived status, or None. A read of local state:
        call it between applies (a node does so on its apply thread)."""
        record = self._state.records.by_id.get(job_id)
        return None if record is None else ops_records.view(self._state, record)

    def job_records(
        self, statuses: frozenset[str] = frozenset(), after_id: int = 0, limit: int = 0
    ) -> tuple[list[RecordView], int]:
        """Records in job id order after ``after_id``, those whose status is in ``statuses``
        (all when empty), at most ``limit`` (all when 0); and the id to continue after, or 0
        when there are no more."""
        state = self._state
        found: list[RecordView] = []
        by_id = state.records.by_id
        # Sorted here, not kept sorted: a record made by a worker's report may be older than
        # the newest one, and a listing is rare next to the commands that add records.
        for job_id in sorted(by_id):
            if job_id <= after_id:
                continue
            shown = ops_records.view(state, by_id[job_id])
            if statuses and shown.status not in statuses:
                continue
            if limit and len(found) == limit:
                return found, found[-1].job_id
            found.append(shown)
        return found, 0

    def record_count(self) -> int:
        return len(self._state.records.by_id)

    @property
    def records_version(self) -> int:
        """Changes whenever a record does (local: not part of the replicated state)."""
        return self._state.records.version

    # Reads from another thread, without stopping applies: a node's API serves records from
    # its own replica. A record is an immutable value, replaced on change; the dict lookups
    # and the C-level copy below are atomic with respect to the applying thread.

    def record_of(self, job_id: int) -> JobRecord | None:
        return self._state.records.by_id.get(job_id)

    def all_records(self) -> list[JobRecord]:
        """Every record, copied in one C-level step (a consistent set)."""
        return list(self._state.records.by_id.values())

    def job_place(self, job_id: int) -> str | None:
        """The job's place ("ready", ..., "" when it is not in the queue), or None while an
        apply is moving it between places (read again)."""
        job = self._state.jobs.get(job_id)
        if job is not None and job.state == MOVING:
            return None
        return ops_records.queue_state(job)

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which a Tick would change anything (a delay or TTR end, a reserve
        timeout, a deadline-soon, a pause end, a lease expiry), or None when nothing is pending.
        It may be earlier than ``now_ms`` (a deadline-soon instant that had already passed when
        its client started waiting): a Tick at any time from then on processes it."""
        return next_event_ms(self._state)

    def snapshot(self) -> bytes:
        """Versioned bytes of the whole state: the same state gives the same bytes."""
        return encode_state(self._state)

    @classmethod
    def restore(cls, data: bytes) -> JobStateMachine:
        """A machine in the state ``data`` (from ``snapshot()``) describes."""
        state = decode_state(data)
        machine = cls(MachineConfig(max_job_size=state.max_job_size))
        machine._state = state
        return machine

    def check_invariants(self) -> None:
        """Raise AssertionError (with a message) if any structure disagrees with another."""
        now_ms = self._state.now_ms
        assert now_ms >= self._checked_now_ms, (
            f"time ran backwards: {now_ms} < {self._checked_now_ms}"
        )
        self._checked_now_ms = now_ms
        check_state(self._state)
