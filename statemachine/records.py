"""Job records: what the job API (joblet's RunJob, GetJobStatus, ListJobs, StopJob) knows of a
job beyond its place in the queue, replicated with it.

Theory of operation. A record is created with its job (``RunJob``: put and record in one
command) or, for a job put by any other client, when a worker reports that it starts it
(``ReportJobStart``). It then changes only by commands: a worker's start and end reports, a stop
request, and retention. Its joblet status is not stored while the job lives: it is derived from
the record and the job's place in the queue whenever it is read (``view``), so the queue's hot
paths (reserve, release, TTR expiry, a worker's death) never touch a record:

- a final status (COMPLETED, FAILED, STOPPED), once an end report or a stop settled it;
- else RUNNING while the job is reserved and its latest started attempt has not ended;
- else INITIALIZING: queued, delayed for a retry, buried by hand, or reserved and not yet
  started; ``queue_state`` says which, and ``lost_attempts`` counts the attempts that started and
  never reported an end (their worker died; the queue gave the job back after its TTR);
- a record whose job left the queue without a final report (deleted by a beanstalkd client) is
  STOPPED with ``queue_state`` "deleted".

Retention: finished records are kept in finish order and removed, oldest first, when there are
more than ``max_finished`` or when they are older than ``max_age_ms`` (an event the machine
processes at its time, so every replica removes the same records). Records of live jobs are
never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

INITIALIZING = "INITIALIZING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
STOPPED = "STOPPED"
STATUSES = (INITIALIZING, RUNNING, COMPLETED, FAILED, STOPPED)
FINAL_STATUSES = (COMPLETED, FAILED, STOPPED)

DEFAULT_MAX_FINISHED = 100_000
DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What a record keeps of a job's spec (never its body: bodies may be large, and a record
    outlives its job). Limits of 0 or "" mean "the worker's default" or "not limited"."""

    command: str
    args: tuple[str, ...] = ()
    max_cpu: int = 0  # percent of one core
    max_memory_mb: int = 0
    max_iobps: int = 0
    cpu_cores: str = ""
    pids: int = 0
    timeout_s: int = 0
    network: str = ""
    workdir: str = ""
    env: tuple[str, ...] = ()  # "NAME=value"
    max_retries: int = 0


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How an attempt ended, as the worker's runner saw it."""

    result: str  # exited, signaled, oom, timeout, stopped, failed_to_start, invalid_spec, ...
    exit_code: int | None = None
    signal: int = 0
    oom_killed: bool = False
    timed_out: bool = False
    duration_ms: int = 0
    peak_memory_bytes: int = 0
    cpu_time_ms: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: int
    summary: JobSummary
    tube: str
    priority: int
    created_ms: int
    attempt: int = 0  # the latest attempt a worker reported starting; 0: none yet
    worker_id: str = ""
    log_address: str = ""  # host:port of that worker's log service
    started_ms: int = 0  # when the latest attempt started (0: none)
    ended_attempt: int = 0  # the latest attempt whose end was reported
    ended_ms: int = 0  # when that attempt ended, or the job was stopped (0: not yet)
    last: AttemptResult | None = None  # that attempt's end
    lost_attempts: int = 0
    stop_requested: bool = False
    final_status: str = ""  # COMPLETED, FAILED or STOPPED once settled

    def running_attempt(self) -> bool:
        """The latest started attempt has not reported its end."""
        return self.attempt > self.ended_attempt


@dataclass(frozen=True, slots=True)
class RecordView:
    """A record with its derived status, as the job API shows it."""

    record: JobRecord
    status: str
    queue_state: str  # ready, delayed, reserved, buried, deleted, or "" once final
    exit_code: int  # joblet's: the exit code, -1 when stopped or killed by a signal, 0 before

    @property
    def job_id(self) -> int:
        return self.record.job_id


def derive(record: JobRecord, queue_state: str) -> RecordView:
    """The joblet status of ``record`` whose job is in ``queue_state`` ("" when the job is no
    longer in the queue). Pure; see the module docstring."""
    if record.final_status:
        return RecordView(record, record.final_status, "", final_exit_code(record))
    if not queue_state:
        return RecordView(record, STOPPED, "deleted", -1)
    if queue_state == "reserved" and record.running_attempt():
        return RecordView(record, RUNNING, queue_state, 0)
    return RecordView(record, INITIALIZING, queue_state, 0)


def final_exit_code(record: JobRecord) -> int:
    last = record.last
    if record.final_status == STOPPED or last is None or last.exit_code is None:
        return -1
    return last.exit_code


def settle(last: AttemptResult, stop_requested: bool, final: bool) -> str:
    """The final status an end report gives, or "" when the job will run again. A job stopped
    on request is STOPPED, and so is one whose stop was requested and that would otherwise be
    retried (it must never run again); one that ended on its own first keeps its result."""
    if last.result == "stopped" or (stop_requested and not final):
        return STOPPED
    if not final:
        return ""
    return COMPLETED if last.result == "exited" and last.exit_code == 0 else FAILED


class Records:
    """The replicated table of records, and the finished ones in finish order."""

    __slots__ = ("by_id", "finished", "max_age_ms", "max_finished", "version")

    def __init__(
        self, max_finished: int = DEFAULT_MAX_FINISHED, max_age_ms: int = DEFAULT_MAX_AGE_MS
    ) -> None:
        self.by_id: dict[int, JobRecord] = {}
        self.finished: dict[int, int] = {}  # job id -> ended_ms, oldest first
        self.max_finished = max_finished
        self.max_age_ms = max_age_ms
        # Counts changes, so a node can tell "records changed" from an applied entry (and tell
        # its followers at once: cluster/raftcore.py rule 6). Not state: not in snapshots.
        self.version = 0

    def put(self, record: JobRecord) -> None:
        """Store ``record``; a record that became final joins the finished ones (at the end)."""
        self.version += 1
        self.by_id[record.job_id] = record
        if record.final_status and record.job_id not in self.finished:
            self.finished[record.job_id] = record.ended_ms
            self._trim_count()

    def update(self, record: JobRecord, **changes: object) -> JobRecord:
        changed = replace(record, **changes)  # type: ignore[arg-type]
        self.put(changed)
        return changed

    def _trim_count(self) -> None:
        while len(self.finished) > self.max_finished:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        self.version += 1
        job_id = next(iter(self.finished))
        del self.finished[job_id]
        del self.by_id[job_id]

    def next_expiry_ms(self) -> int | None:
        """When the oldest finished record is due for removal by age, or None."""
        if not self.finished:
            return None
        return next(iter(self.finished.values())) + self.max_age_ms

    def expire(self, now_ms: int) -> None:
        """Remove finished records older than ``max_age_ms`` at ``now_ms``."""
        while self.finished and next(iter(self.finished.values())) + self.max_age_ms <= now_ms:
            self._drop_oldest()

    def set_retention(self, max_finished: int, max_age_ms: int) -> None:
        self.max_finished = max_finished
        self.max_age_ms = max_age_ms
        self._trim_count()
