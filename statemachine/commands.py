"""Commands: everything that can change or read the job queue, as plain frozen data.

A command is what a proxy, a worker or an admin asks of the queue. It carries no time: the
leader stamps ``now_ms`` when it proposes the command, and ``JobStateMachine.apply`` takes the
two together. Every field is an int, a str, bytes or a tuple of those, so a command encodes to
bytes deterministically (see ``statemachine.codec``).

Units are milliseconds inside (``delay_ms``, ``ttr_ms``); the protocol's seconds stay at the
codec in ``proxy/protocol.py``.

Client-scoped commands name a ``client_id``: one beanstalkd connection, registered with
``Connect`` under the ``proxy_id`` that serves it. Per-connection state (the used tube, the watch
list, reservations, a waiting reserve) lives in the machine so that it survives a leader change
and so that stats such as ``current-watching`` are true for the whole cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine.records import AttemptResult, JobSummary

# A request id names a put, reserve or run: a reserve's wake-up carries it back, and the cluster's
# request window (cluster/replicated.py) answers a retry under it with the first outcome, so
# the machine never sees a retry. "" means none.
NO_REQUEST_ID = ""


# --- Sessions and leases ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """A client connection opened on a proxy. Uses and watches ``default``. Idempotent.

    ``lease_ms`` > 0 also renews the proxy's lease (as RenewLease) in the same command: a proxy
    renews only while it has connections, so its first new connection after an idle spell must
    be covered by a lease from the start, or a crash right then would strand it."""

    client_id: str
    proxy_id: str
    lease_ms: int = 0


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A client closed its connection or sent ``quit``: its reserved jobs go back to ready at
    once (not a timeout) and its waiting reserve is cancelled. Unknown clients are ignored."""

    client_id: str


@dataclass(frozen=True, slots=True)
class RenewLease:
    """A proxy says it is alive until ``now + lease_ms``. When a lease runs out, every client of
    that proxy is disconnected (as by ``Disconnect``) by the tick that passes its expiry."""

    proxy_id: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class DropProxy:
    """A proxy shut down cleanly: disconnect all its clients now and forget its lease."""

    proxy_id: str


@dataclass(frozen=True, slots=True)
class ExtendLeases:
    """A new leader took over: no proxy's lease runs out before ``until_ms``. It is applied at
    the machine's time without advancing it, so a lease that the outage before it would have
    expired is kept: as etcd renews every lease when its leader changes, a failover never
    disconnects the clients of a proxy that is alive and renewing."""

    until_ms: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes. Proposed by the leader only when ``next_deadline_ms()`` is due."""


# --- Connection state ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Use:
    client_id: str
    tube: str


@dataclass(frozen=True, slots=True)
class Watch:
    client_id: str
    tube: str


@dataclass(frozen=True, slots=True)
class Ignore:
    client_id: str
    tube: str


@dataclass(frozen=True, slots=True)
class ListTubeUsed:
    client_id: str


@dataclass(frozen=True, slots=True)
class ListTubesWatched:
    client_id: str


# --- Jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put:
    """Create a job in ``tube``. ``client_id`` may be "" for a put that no connection made
    (coolbeans' ``Put`` RPC); a named client counts as a producer. ``ttr_ms`` below 1000 is
    raised to 1000 (beanstalkd: ttr < 1 s becomes 1 s)."""

    tube: str
    priority: int
    delay_ms: int
    ttr_ms: int
    body: bytes
    client_id: str = ""
    request_id: str = NO_REQUEST_ID


@dataclass(frozen=True, slots=True)
class RejectedPut:
    """A put whose line parsed but whose body was refused before it reached the machine
    (JOB_TOO_BIG, EXPECTED_CRLF, DRAINING, trailing garbage): beanstalkd still counts it in
    ``cmd-put``, so the proxy reports it here. beanstalkd marks the connection a producer only
    for refusals after its size and garbage checks (EXPECTED_CRLF, DRAINING): ``producer``."""

    client_id: str
    producer: bool = True


@dataclass(frozen=True, slots=True)
class Reserve:
    """Reserve the most urgent ready job across the client's watched, unpaused tubes.

    ``timeout_ms`` None waits forever (``reserve``); 0 answers now (``reserve-with-timeout 0``).
    When nothing is ready the reply is ``Waiting`` and the answer arrives later as a ``Wakeup``
    in the outcome of whichever command or tick produces it."""

    client_id: str
    timeout_ms: int | None
    request_id: str = NO_REQUEST_ID
    with_timeout: bool = False  # counts cmd-reserve-with-timeout rather than cmd-reserve


@dataclass(frozen=True, slots=True)
class ReserveJob:
    client_id: str
    job_id: int


@dataclass(frozen=True, slots=True)
class Delete:
    """``client_id`` "" deletes as an admin (any state, reserved included)."""

    client_id: str
    job_id: int


@dataclass(frozen=True, slots=True)
class Release:
    client_id: str
    job_id: int
    priority: int
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Bury:
    client_id: str
    job_id: int
    priority: int


@dataclass(frozen=True, slots=True)
class Touch:
    client_id: str
    job_id: int


@dataclass(frozen=True, slots=True)
class Kick:
    """Kick up to ``bound`` jobs in ``tube``: buried ones if it has any, else delayed ones."""

    tube: str
    bound: int


@dataclass(frozen=True, slots=True)
class KickJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class PauseTube:
    tube: str
    delay_ms: int


# --- Reads (they go through the log too: they count in stats and are linearizable) --------


@dataclass(frozen=True, slots=True)
class Peek:
    job_id: int


@dataclass(frozen=True, slots=True)
class PeekReady:
    tube: str


@dataclass(frozen=True, slots=True)
class PeekDelayed:
    tube: str


@dataclass(frozen=True, slots=True)
class PeekBuried:
    tube: str


@dataclass(frozen=True, slots=True)
class StatsJob:
    """``counted`` False: a read the cluster API makes on its own behalf (coolbeans' GetJob
    filling in a job), which no client sent and ``cmd-stats-job`` must not count."""

    job_id: int
    counted: bool = True


@dataclass(frozen=True, slots=True)
class StatsTube:
    tube: str


@dataclass(frozen=True, slots=True)
class Stats:
    pass


@dataclass(frozen=True, slots=True)
class ListTubes:
    pass


@dataclass(frozen=True, slots=True)
class CheckClients:
    """Which of ``client_ids`` (of ``proxy_id``) are still waiting, known but not waiting, or
    unknown. coolbeans' ``CheckClientState``: a proxy's recovery after a broken stream."""

    proxy_id: str
    client_ids: tuple[str, ...]


# --- Job records (the job API; statemachine.records) -------------------------------------


@dataclass(frozen=True, slots=True)
class RunJob:
    """Put a job exactly as ``put`` does and create its record in the same command, so there
    is never a queued job without its record or a record without its job."""

    put: Put
    summary: JobSummary
    request_id: str = NO_REQUEST_ID


@dataclass(frozen=True, slots=True)
class ReportJobStart:
    """A worker starts attempt ``attempt`` of ``job_id`` (which it holds reserved). Creates
    the record from ``summary`` when the job was put without one. The reply says whether a stop
    was requested meanwhile, in which case the worker must not run it."""

    job_id: int
    attempt: int
    worker_id: str
    log_address: str
    summary: JobSummary
    tube: str
    priority: int


@dataclass(frozen=True, slots=True)
class ReportJobEnd:
    """A worker's attempt ended with ``result``; ``final`` when the worker will delete or bury
    the job rather than release it for another attempt."""

    job_id: int
    attempt: int
    result: AttemptResult
    final: bool


@dataclass(frozen=True, slots=True)
class StopJob:
    """Stop a job through its record: a queued, delayed or buried job leaves the queue at once
    and is STOPPED; a running one is flagged and its worker told (a ``StopRequested`` wake-up
    to the worker's id), and its end report makes it STOPPED."""

    job_id: int


@dataclass(frozen=True, slots=True)
class SetRecordRetention:
    """Keep at most ``max_finished`` finished records, none older than ``max_age_ms``."""

    max_finished: int
    max_age_ms: int


Command = (
    Connect
    | Disconnect
    | RenewLease
    | DropProxy
    | ExtendLeases
    | Tick
    | Use
    | Watch
    | Ignore
    | ListTubeUsed
    | ListTubesWatched
    | Put
    | RejectedPut
    | Reserve
    | ReserveJob
    | Delete
    | Release
    | Bury
    | Touch
    | Kick
    | KickJob
    | PauseTube
    | Peek
    | PeekReady
    | PeekDelayed
    | PeekBuried
    | StatsJob
    | StatsTube
    | Stats
    | ListTubes
    | CheckClients
    | RunJob
    | ReportJobStart
    | ReportJobEnd
    | StopJob
    | SetRecordRetention
)

# Commands that never change anything but counters: a node may answer them from a
# linearizable read instead of a log entry if it keeps the counters elsewhere.
READ_COMMANDS = (
    Peek,
    PeekReady,
    PeekDelayed,
    PeekBuried,
    StatsJob,
    StatsTube,
    Stats,
    ListTubes,
    ListTubeUsed,
    ListTubesWatched,
    CheckClients,
)
