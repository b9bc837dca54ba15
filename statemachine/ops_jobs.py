"""Command handlers that create, reserve and move jobs (Put to PauseTube).

Theory of operation: each handler takes the ``State`` and a command and returns a reply; it
changes state only through ``State``'s transitions. Order inside a handler is always: resolve
the client (UnknownClient changes nothing), validate values (InvalidArgument changes nothing),
count the command, then act. A handler that makes a job ready or unpauses a tube calls
``state.match()`` before it returns, so waiting reservers are served in the same command.
"""

from __future__ import annotations

from heapq import heappop

from statemachine import commands as c
from statemachine.jobs import BURIED, DELAYED, ID_MASK, RESERVED, Job
from statemachine.limits import (
    DEADLINE_SOON_MARGIN_MS,
    PRIORITY_MAX,
    RESERVE_TIMEOUT_MAX_MS,
    SECONDS_FIELD_MAX_MS,
    TTR_MIN_MS,
    delay_error,
    first_error,
    priority_error,
    range_error,
    tube_name_error,
)
from statemachine.replies import (
    AlreadyWaiting,
    Buried,
    DeadlineSoon,
    Deleted,
    Inserted,
    InvalidArgument,
    JobTooBig,
    Kicked,
    NotFound,
    Ok,
    Paused,
    Released,
    Reply,
    Reserved,
    TimedOut,
    Touched,
    UnknownClient,
    Waiting,
)
from statemachine.sessions import Client
from statemachine.state import State
from statemachine.tubes import Tube


def _put_error(cmd: c.Put) -> str | None:
    return first_error(
        tube_name_error(cmd.tube),
        priority_error(cmd.priority),
        delay_error(cmd.delay_ms),
        range_error("ttr_ms", cmd.ttr_ms, SECONDS_FIELD_MAX_MS),
    )


def put(state: State, cmd: c.Put) -> Reply:
    # Fast path: an existing tube's name is valid, and plain range checks need no message.
    if not (
        cmd.tube in state.tubes
        and 0 <= cmd.priority <= PRIORITY_MAX
        and 0 <= cmd.delay_ms <= SECONDS_FIELD_MAX_MS
        and 0 <= cmd.ttr_ms <= SECONDS_FIELD_MAX_MS
    ):
        error = _put_error(cmd)
        if error is not None:
            return InvalidArgument(error)
    client = None
    if cmd.client_id:
        client = state.clients.get(cmd.client_id)
        if client is None:
            return UnknownClient(cmd.client_id)
    state.counters.cmd_put += 1
    if len(cmd.body) > state.max_job_size:
        return JobTooBig()  # beanstalkd (prot.c) marks the producer only after this check
    if client is not None:
        client.producer = True
    job_id = state.next_job_id
    state.next_job_id = job_id + 1
    tube = state.tube_for(cmd.tube)
    ttr_ms = cmd.ttr_ms if cmd.ttr_ms >= TTR_MIN_MS else TTR_MIN_MS
    job = Job(job_id, tube, cmd.priority, cmd.delay_ms, ttr_ms, cmd.body, state.now_ms)
    state.jobs[job_id] = job
    tube.total_jobs += 1
    state.counters.total_jobs += 1
    if cmd.delay_ms:
        state.enter_delayed(job, state.now_ms + cmd.delay_ms)
    else:
        state.enter_ready(job)
        state.match()
    return Inserted(job_id)


def rejected_put(state: State, cmd: c.RejectedPut) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    state.counters.cmd_put += 1
    if cmd.producer:
        client.producer = True
    return Ok()


# A client watching more tubes than this first asks the machine-wide index of tube tops: when
# the best ready job overall is in a tube it watches (the usual case for a worker that watches
# everything), that is its answer without comparing every watched tube's top.
WATCH_SCAN_LIMIT = 4


def _best_ready_tube(state: State, client: Client) -> tuple[Tube | None, int]:
    """The watched, unpaused tube whose best ready job is best overall, and that job's key."""
    watched = client.watched
    if len(watched) > WATCH_SCAN_LIMIT:
        key = state.best_ready_key()
        if key is None:
            return None, 0
        tube = state.jobs[key & ID_MASK].tube
        if tube in client.watch_set:
            return tube, key
    best_tube: Tube | None = None
    best_key = 0
    for tube in watched:
        if tube.ready_count and tube.pause_until_ms is None:
            key = tube.top if tube.top >= 0 else tube.top_ready_key(state.jobs)
            if best_tube is None or key < best_key:
                best_tube, best_key = tube, key
    return best_tube, best_key


def _deadline_soon(state: State, client: Client) -> bool:
    """beanstalkd 8.3(a): a held job is in its last second and no watched tube has a ready job
    (paused tubes count here, as in beanstalkd)."""
    if not client.reserved:
        return False
    soonest_ms = min(job.deadline_ms for job in client.reserved.values())
    if state.now_ms < soonest_ms - DEADLINE_SOON_MARGIN_MS:
        return False
    return not any(tube.ready_count for tube in client.watched)


def reserve(state: State, cmd: c.Reserve) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    if client.wait_seq:
        return AlreadyWaiting()
    if cmd.timeout_ms is not None and not 0 <= cmd.timeout_ms <= RESERVE_TIMEOUT_MAX_MS:
        return InvalidArgument(f"timeout_ms {cmd.timeout_ms} outside 0..{RESERVE_TIMEOUT_MAX_MS}")
    if cmd.with_timeout:
        state.counters.cmd_reserve_with_timeout += 1
    else:
        state.counters.cmd_reserve += 1
    client.worker = True
    tube, key = _best_ready_tube(state, client)
    if tube is not None:
        job = state.take_top_ready(tube, key)
        state.enter_reserved(job, client)
        return Reserved(job.id, job.body)
    if _deadline_soon(state, client):
        return DeadlineSoon()
    if cmd.timeout_ms == 0:
        return TimedOut()
    deadline_ms = None if cmd.timeout_ms is None else state.now_ms + cmd.timeout_ms
    state.start_wait(client, deadline_ms, cmd.request_id)
    return Waiting()


def reserve_job(state: State, cmd: c.ReserveJob) -> Reply:
    """reserve-job (1.12): any tube, any state but reserved; ignores watch list and pause."""
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    job = state.jobs.get(cmd.job_id)
    if job is None or job.state == RESERVED:
        return NotFound()
    client.worker = True
    state.leave_place(job)
    state.enter_reserved(job, client)
    return Reserved(job.id, job.body)


def delete(state: State, cmd: c.Delete) -> Reply:
    """Reserved by this client, or ready, delayed or buried; client "" is an admin."""
    if cmd.client_id and cmd.client_id not in state.clients:
        return UnknownClient(cmd.client_id)
    state.counters.cmd_delete += 1
    job = state.jobs.get(cmd.job_id)
    if job is None:
        return NotFound()
    if job.state == RESERVED and cmd.client_id:
        assert job.holder is not None
        if job.holder.id != cmd.client_id:
            return NotFound()
    job.tube.cmd_delete += 1
    state.remove_job(job)
    return Deleted()


def _held_job(state: State, client_id: str, job_id: int) -> Job | None:
    job = state.jobs.get(job_id)
    if job is None or job.state != RESERVED or job.holder is None or job.holder.id != client_id:
        return None
    return job


def release(state: State, cmd: c.Release) -> Reply:
    if cmd.client_id not in state.clients:
        return UnknownClient(cmd.client_id)
    error = first_error(priority_error(cmd.priority), delay_error(cmd.delay_ms))
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_release += 1
    job = _held_job(state, cmd.client_id, cmd.job_id)
    if job is None:
        return NotFound()
    state.leave_place(job)
    job.priority = cmd.priority
    job.delay_ms = cmd.delay_ms
    job.releases += 1
    if cmd.delay_ms:
        state.enter_delayed(job, state.now_ms + cmd.delay_ms)
    else:
        state.enter_ready(job)
        state.match()
    return Released()


def bury(state: State, cmd: c.Bury) -> Reply:
    if cmd.client_id not in state.clients:
        return UnknownClient(cmd.client_id)
    error = priority_error(cmd.priority)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_bury += 1
    job = _held_job(state, cmd.client_id, cmd.job_id)
    if job is None:
        return NotFound()
    state.leave_place(job)
    job.priority = cmd.priority
    job.buries += 1
    state.enter_buried(job)
    return Buried()


def touch(state: State, cmd: c.Touch) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    state.counters.cmd_touch += 1
    job = _held_job(state, cmd.client_id, cmd.job_id)
    if job is None:
        return NotFound()
    state.restart_ttr(job, client)
    return Touched()


def _kick_one(state: State, job: Job) -> None:
    state.leave_place(job)
    job.kicks += 1
    state.enter_ready(job)


def kick(state: State, cmd: c.Kick) -> Reply:
    """Up to ``bound`` buried jobs oldest first, or if none is buried, delayed jobs soonest
    first (beanstalkd 7.13). A missing tube kicks nothing."""
    error = tube_name_error(cmd.tube)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_kick += 1
    tube = state.tubes.get(cmd.tube)
    kicked = 0
    if tube is not None and cmd.bound > 0:
        if tube.buried:
            while tube.buried and kicked < cmd.bound:
                _kick_one(state, next(iter(tube.buried.values())))
                kicked += 1
        else:
            while tube.delayed_count and kicked < cmd.bound:
                key = tube.top_delayed_key(state.jobs)
                heappop(tube.delayed)
                _kick_one(state, state.jobs[key & ID_MASK])
                kicked += 1
        state.match()
    return Kicked(kicked)


def kick_job(state: State, cmd: c.KickJob) -> Reply:
    job = state.jobs.get(cmd.job_id)
    if job is None or job.state not in (BURIED, DELAYED):
        return NotFound()
    _kick_one(state, job)
    state.match()
    return Kicked(1)


def pause_tube(state: State, cmd: c.PauseTube) -> Reply:
    error = first_error(tube_name_error(cmd.tube), delay_error(cmd.delay_ms))
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_pause_tube += 1
    tube = state.tubes.get(cmd.tube)
    if tube is None:
        return NotFound()
    tube.cmd_pause_tube += 1
    if cmd.delay_ms == 0:
        # beanstalkd turns a delay of 0 into 1 ns: the tube unpauses at once.
        state.unpause(tube)
        state.match()
    else:
        tube.pause_ms = cmd.delay_ms
        tube.pause_until_ms = state.now_ms + cmd.delay_ms
        state.paused[tube.name] = tube
    return Paused()
