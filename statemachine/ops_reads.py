"""Read commands: peeks, stats, stats-tube, stats-job and list-tubes.

Theory of operation: reads go through the log like everything else because they count in
beanstalkd's cmd-* counters, which are replicated. Apart from that counter they change nothing.
Every figure is computed from the structures themselves (counts kept by the transitions, or a
scan of clients), so it is true for the whole cluster. Times are milliseconds; the front end
truncates to beanstalkd's whole seconds.
"""

from __future__ import annotations

from statemachine import commands as c
from statemachine.jobs import DELAYED, ID_MASK, RESERVED, STATE_NAMES
from statemachine.limits import tube_name_error
from statemachine.replies import (
    Found,
    InvalidArgument,
    JobStats,
    NotFound,
    Reply,
    ServerStats,
    TubeList,
    TubeStats,
)
from statemachine.state import State
from statemachine.tubes import Tube


def peek(state: State, cmd: c.Peek) -> Reply:
    state.counters.cmd_peek += 1
    job = state.jobs.get(cmd.job_id)
    return NotFound() if job is None else Found(job.id, job.body)


def _peek_tube(state: State, name: str) -> Tube | InvalidArgument | None:
    error = tube_name_error(name)
    if error is not None:
        return InvalidArgument(error)
    return state.tubes.get(name)


def peek_ready(state: State, cmd: c.PeekReady) -> Reply:
    """The best ready job, even in a paused tube (beanstalkd 7.12)."""
    tube = _peek_tube(state, cmd.tube)
    if isinstance(tube, InvalidArgument):
        return tube
    state.counters.cmd_peek_ready += 1
    if tube is None or not tube.ready_count:
        return NotFound()
    job = state.jobs[tube.top_ready_key(state.jobs) & ID_MASK]
    return Found(job.id, job.body)


def peek_delayed(state: State, cmd: c.PeekDelayed) -> Reply:
    tube = _peek_tube(state, cmd.tube)
    if isinstance(tube, InvalidArgument):
        return tube
    state.counters.cmd_peek_delayed += 1
    if tube is None or not tube.delayed_count:
        return NotFound()
    job = state.jobs[tube.top_delayed_key(state.jobs) & ID_MASK]
    return Found(job.id, job.body)


def peek_buried(state: State, cmd: c.PeekBuried) -> Reply:
    tube = _peek_tube(state, cmd.tube)
    if isinstance(tube, InvalidArgument):
        return tube
    state.counters.cmd_peek_buried += 1
    job = None if tube is None else tube.oldest_buried()
    return NotFound() if job is None else Found(job.id, job.body)


def stats_job(state: State, cmd: c.StatsJob) -> Reply:
    if cmd.counted:
        state.counters.cmd_stats_job += 1
    job = state.jobs.get(cmd.job_id)
    if job is None:
        return NotFound()
    now_ms = state.now_ms
    time_left_ms = job.deadline_ms - now_ms if job.state in (RESERVED, DELAYED) else 0
    return JobStats(
        job_id=job.id,
        tube=job.tube.name,
        state=STATE_NAMES[job.state],
        priority=job.priority,
        age_ms=now_ms - job.created_ms,
        delay_ms=job.delay_ms,
        ttr_ms=job.ttr_ms,
        time_left_ms=time_left_ms,
        reserves=job.reserves,
        timeouts=job.timeouts,
        releases=job.releases,
        buries=job.buries,
        kicks=job.kicks,
    )


def stats_tube(state: State, cmd: c.StatsTube) -> Reply:
    error = tube_name_error(cmd.tube)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_stats_tube += 1
    tube = state.tubes.get(cmd.tube)
    if tube is None:
        return NotFound()
    paused_ms = 0 if tube.pause_until_ms is None else tube.pause_until_ms - state.now_ms
    return TubeStats(
        name=tube.name,
        current_jobs_urgent=tube.urgent_count,
        current_jobs_ready=tube.ready_count,
        current_jobs_reserved=tube.reserved_count,
        current_jobs_delayed=tube.delayed_count,
        current_jobs_buried=len(tube.buried),
        total_jobs=tube.total_jobs,
        current_using=tube.using_count,
        current_watching=tube.watching_count,
        current_waiting=len(tube.waiters),
        cmd_delete=tube.cmd_delete,
        cmd_pause_tube=tube.cmd_pause_tube,
        pause_ms=tube.pause_ms,
        pause_time_left_ms=paused_ms,
    )


def stats(state: State, cmd: c.Stats) -> Reply:
    counters = state.counters
    counters.cmd_stats += 1
    tubes = state.tube_order
    clients = state.clients.values()
    return ServerStats(
        current_jobs_urgent=sum(t.urgent_count for t in tubes),
        current_jobs_ready=sum(t.ready_count for t in tubes),
        current_jobs_reserved=sum(t.reserved_count for t in tubes),
        current_jobs_delayed=sum(t.delayed_count for t in tubes),
        current_jobs_buried=sum(len(t.buried) for t in tubes),
        **counters.cmd_values(),
        job_timeouts=counters.job_timeouts,
        total_jobs=counters.total_jobs,
        max_job_size=state.max_job_size,
        current_tubes=len(tubes),
        current_connections=len(state.clients),
        current_producers=sum(1 for cl in clients if cl.producer),
        current_workers=sum(1 for cl in clients if cl.worker),
        current_waiting=len(state.waiting),
        total_connections=counters.total_connections,
    )


def list_tubes(state: State, cmd: c.ListTubes) -> Reply:
    state.counters.cmd_list_tubes += 1
    return TubeList(tuple(tube.name for tube in state.tube_order))
