"""Handlers of the job-record commands: RunJob, ReportJobStart, ReportJobEnd, StopJob and
SetRecordRetention (``statemachine.records`` explains records and their statuses).

Every handler is idempotent where a retry may repeat it: a worker's report sent twice, or a
stop asked twice, changes nothing the second time."""

from __future__ import annotations

from statemachine import commands as c
from statemachine import ops_jobs
from statemachine.jobs import BURIED, DELAYED, READY, RESERVED, Job
from statemachine.records import STOPPED, JobRecord, RecordView, derive, settle
from statemachine.replies import (
    Inserted,
    InvalidArgument,
    JobStarted,
    NotFound,
    NotRunning,
    Ok,
    Reply,
    StopRequested,
    Wakeup,
)
from statemachine.state import State

_PLACES = {READY: "ready", DELAYED: "delayed", RESERVED: "reserved", BURIED: "buried"}
MAX_RETENTION_RECORDS = 10_000_000


def queue_state(job: Job | None) -> str:
    """The job's place in the queue by name, or "" when it is no longer in the queue."""
    return "" if job is None else _PLACES.get(job.state, "")


def view(state: State, record: JobRecord) -> RecordView:
    return derive(record, queue_state(state.jobs.get(record.job_id)))


def run_job(state: State, cmd: c.RunJob) -> Reply:
    reply = ops_jobs.put(state, cmd.put)
    if isinstance(reply, Inserted):
        put = cmd.put
        record = JobRecord(reply.job_id, cmd.summary, put.tube, put.priority, state.now_ms)
        state.records.put(record)
    return reply


def report_start(state: State, cmd: c.ReportJobStart) -> Reply:
    records = state.records
    record = records.by_id.get(cmd.job_id)
    if record is not None and record.final_status:
        return JobStarted(stop_requested=True)  # settled already: it must not run again
    job = state.jobs.get(cmd.job_id)
    if job is None:
        return NotFound()
    if record is None:
        record = JobRecord(cmd.job_id, cmd.summary, cmd.tube, cmd.priority, job.created_ms)
        records.put(record)
    if record.stop_requested:
        return JobStarted(stop_requested=True)
    if record.attempt == cmd.attempt and record.worker_id == cmd.worker_id:
        return JobStarted(stop_requested=False)  # the same report again
    lost = record.lost_attempts + (1 if record.running_attempt() else 0)
    records.update(
        record,
        summary=cmd.summary,  # as the worker applies it: its defaults filled in
        attempt=cmd.attempt,
        worker_id=cmd.worker_id,
        log_address=cmd.log_address,
        started_ms=state.now_ms,
        lost_attempts=lost,
    )
    return JobStarted(stop_requested=False)


def report_end(state: State, cmd: c.ReportJobEnd) -> Reply:
    records = state.records
    record = records.by_id.get(cmd.job_id)
    if record is None:
        return NotFound()
    if record.final_status or cmd.attempt != record.attempt or not record.running_attempt():
        return Ok()  # a repeated or stale report: the record already says more
    status = settle(cmd.result, record.stop_requested, cmd.final)
    records.update(
        record,
        ended_attempt=cmd.attempt,
        ended_ms=state.now_ms,
        last=cmd.result,
        final_status=status,
    )
    return Ok()


def stop_job(state: State, cmd: c.StopJob) -> Reply:
    records = state.records
    record = records.by_id.get(cmd.job_id)
    if record is None:
        return NotFound()
    current = view(state, record)
    if record.final_status or current.status == STOPPED:
        return NotRunning(cmd.job_id, current.status)
    job = state.jobs.get(cmd.job_id)
    assert job is not None  # a record without a final status and without its job is STOPPED
    if job.state != RESERVED:
        state.remove_job(job)  # never run afterwards
        record = records.update(
            record, stop_requested=True, final_status=STOPPED, ended_ms=state.now_ms
        )
        return view(state, record)
    if not record.stop_requested:
        record = records.update(record, stop_requested=True)
        if record.worker_id and record.running_attempt():
            wakeup = Wakeup("", record.worker_id, f"stop-{cmd.job_id}", StopRequested(cmd.job_id))
            state.wakeups.append(wakeup)
    return view(state, record)


def set_record_retention(state: State, cmd: c.SetRecordRetention) -> Reply:
    if not 0 <= cmd.max_finished <= MAX_RETENTION_RECORDS or cmd.max_age_ms < 0:
        return InvalidArgument(
            f"record retention: max_finished must be 0..{MAX_RETENTION_RECORDS} and "
            f"max_age_ms at least 0 (got {cmd.max_finished}, {cmd.max_age_ms})"
        )
    state.records.set_retention(cmd.max_finished, cmd.max_age_ms)
    state.records.expire(state.now_ms)
    return Ok()
