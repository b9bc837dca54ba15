"""Replies and outcomes: what applying a command gives back, as plain frozen data.

Expected failures (a job that is not there, a client that does not own a job) are replies, not
exceptions, because they are replicated outcomes: every replica computes the same one. The
front ends map replies to wire forms in one table each (beanstalkd lines in
``proxy/protocol.py``, gRPC statuses in ``cluster``).

An ``Outcome`` is the reply to the command's sender plus the ``Wakeup``s: waiting reserves that
this command (or the time that passed before it) answered. The machine never calls back; the
node hands wake-ups to the proxy that owns each client, like etcd raft's ``Ready``.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine.records import RecordView

# --- Success replies --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    """Connect, Disconnect, RenewLease, DropProxy, Tick, RejectedPut."""


@dataclass(frozen=True, slots=True)
class Inserted:
    job_id: int


@dataclass(frozen=True, slots=True)
class Reserved:
    job_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Waiting:
    """Nothing to reserve yet: the answer will come as a Wakeup."""


@dataclass(frozen=True, slots=True)
class DeadlineSoon:
    pass


@dataclass(frozen=True, slots=True)
class TimedOut:
    pass


@dataclass(frozen=True, slots=True)
class Deleted:
    pass


@dataclass(frozen=True, slots=True)
class Released:
    pass


@dataclass(frozen=True, slots=True)
class Buried:
    pass


@dataclass(frozen=True, slots=True)
class Touched:
    pass


@dataclass(frozen=True, slots=True)
class Kicked:
    """``count`` jobs kicked by Kick; KickJob replies Kicked(1)."""

    count: int


@dataclass(frozen=True, slots=True)
class Paused:
    pass


@dataclass(frozen=True, slots=True)
class Using:
    tube: str


@dataclass(frozen=True, slots=True)
class Watching:
    count: int


@dataclass(frozen=True, slots=True)
class Found:
    job_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class TubeList:
    """list-tubes and list-tubes-watched, in beanstalkd's order (see ARCHITECTURE.md)."""

    tubes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobStats:
    """stats-job. Times in ms; the codec truncates to whole seconds as beanstalkd does."""

    job_id: int
    tube: str
    state: str  # "ready" | "delayed" | "reserved" | "buried"
    priority: int
    age_ms: int
    delay_ms: int
    ttr_ms: int
    time_left_ms: int
    reserves: int
    timeouts: int
    releases: int
    buries: int
    kicks: int


@dataclass(frozen=True, slots=True)
class TubeStats:
    """stats-tube: the 14 keys of beanstalkd, in its order."""

    name: str
    current_jobs_urgent: int
    current_jobs_ready: int
    current_jobs_reserved: int
    current_jobs_delayed: int
    current_jobs_buried: int
    total_jobs: int
    current_using: int
    current_watching: int
    current_waiting: int
    cmd_delete: int
    cmd_pause_tube: int
    pause_ms: int
    pause_time_left_ms: int


@dataclass(frozen=True, slots=True)
class ServerStats:
    """stats: the keys the replicated queue knows, for the whole cluster. Process keys (pid,
    version, rusage, uptime, binlog-*, draining, id, hostname, os, platform) are added by the
    front end that formats the reply."""

    current_jobs_urgent: int
    current_jobs_ready: int
    current_jobs_reserved: int
    current_jobs_delayed: int
    current_jobs_buried: int
    cmd_put: int
    cmd_peek: int
    cmd_peek_ready: int
    cmd_peek_delayed: int
    cmd_peek_buried: int
    cmd_reserve: int
    cmd_reserve_with_timeout: int
    cmd_delete: int
    cmd_release: int
    cmd_use: int
    cmd_watch: int
    cmd_ignore: int
    cmd_bury: int
    cmd_kick: int
    cmd_touch: int
    cmd_stats: int
    cmd_stats_job: int
    cmd_stats_tube: int
    cmd_list_tubes: int
    cmd_list_tube_used: int
    cmd_list_tubes_watched: int
    cmd_pause_tube: int
    job_timeouts: int
    total_jobs: int
    max_job_size: int
    current_tubes: int
    current_connections: int
    current_producers: int
    current_workers: int
    current_waiting: int
    total_connections: int


@dataclass(frozen=True, slots=True)
class ClientStates:
    waiting: tuple[str, ...]
    not_waiting: tuple[str, ...]
    missing: tuple[str, ...]


# --- Failure replies (nothing changed except counters) -----------------------------------


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


@dataclass(frozen=True, slots=True)
class NotIgnored:
    pass


@dataclass(frozen=True, slots=True)
class JobTooBig:
    pass


@dataclass(frozen=True, slots=True)
class UnknownClient:
    """The command names a client_id that is not connected (never was, or was disconnected,
    for example because its proxy's lease ran out). The front end should Connect again."""

    client_id: str


@dataclass(frozen=True, slots=True)
class AlreadyWaiting:
    """A Reserve from a client that already has a reserve waiting."""


@dataclass(frozen=True, slots=True)
class InvalidArgument:
    """A value outside what beanstalkd allows (a tube name, a priority above 2**32-1, a
    negative delay). ``message`` says which and why."""

    message: str


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The answer to ReportJobStart: run the attempt, or not (a stop was requested, or the
    job's record is already final)."""

    stop_requested: bool


@dataclass(frozen=True, slots=True)
class NotRunning:
    """StopJob on a job whose record is already final: joblet's FAILED_PRECONDITION."""

    job_id: int
    status: str


@dataclass(frozen=True, slots=True)
class StopRequested:
    """A wake-up for a worker (its id as the proxy id): stop the attempt of ``job_id``."""

    job_id: int


Reply = (
    Ok
    | Inserted
    | Reserved
    | Waiting
    | DeadlineSoon
    | TimedOut
    | Deleted
    | Released
    | Buried
    | Touched
    | Kicked
    | Paused
    | Using
    | Watching
    | Found
    | TubeList
    | JobStats
    | TubeStats
    | ServerStats
    | ClientStates
    | NotFound
    | NotIgnored
    | JobTooBig
    | UnknownClient
    | AlreadyWaiting
    | InvalidArgument
    | JobStarted
    | NotRunning
    | RecordView
)

WaitResult = Reserved | TimedOut | DeadlineSoon | StopRequested


@dataclass(frozen=True, slots=True)
class Wakeup:
    """A waiting reserve was answered: deliver ``result`` to ``client_id`` on ``proxy_id``.

    ``request_id`` is that of the Reserve being answered, so a proxy can drop a duplicate and
    ignore an answer to a reserve it no longer waits for."""

    client_id: str
    proxy_id: str
    request_id: str
    result: WaitResult


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply
    wakeups: tuple[Wakeup, ...] = ()
