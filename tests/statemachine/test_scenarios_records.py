"""Scenarios: job records (the job API): run, start and end reports, retries, a worker's death,
stop, retention, snapshots. The driver checks invariants and a snapshot round trip after every
step."""

from __future__ import annotations

import struct

import pytest
from scenarios.driver import Driver

from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine
from statemachine.records import (
    COMPLETED,
    FAILED,
    INITIALIZING,
    RUNNING,
    STOPPED,
    AttemptResult,
    JobSummary,
)

SUMMARY = JobSummary("python3", ("-c", "print(1)"), max_cpu=50, max_memory_mb=256)
OK_RESULT = AttemptResult("exited", exit_code=0, duration_ms=12)


def run(q: Driver, tube: str = "default", request_id: str = "") -> int:
    reply = q.do(c.RunJob(c.Put(tube, 1024, 0, 60_000, b"{}"), SUMMARY, request_id))
    assert isinstance(reply, r.Inserted)
    return reply.job_id


def start(q: Driver, job_id: int, attempt: int = 1, worker: str = "w1") -> r.Reply:
    return q.do(c.ReportJobStart(job_id, attempt, worker, "127.0.0.1:7000", SUMMARY, "default", 1))


def end(q: Driver, job_id: int, result: AttemptResult, attempt: int = 1, final: bool = True):
    return q.do(c.ReportJobEnd(job_id, attempt, result, final))


def status(q: Driver, job_id: int) -> tuple[str, str, int]:
    shown = q.machine.job_record(job_id)
    assert shown is not None
    return shown.status, shown.queue_state, shown.exit_code


def test_run_job_puts_the_job_and_creates_its_record_in_one_command(q: Driver) -> None:
    job_id = run(q)
    assert q.state_of(job_id) == "ready"
    assert status(q, job_id) == (INITIALIZING, "ready", 0)
    record = q.machine.job_record(job_id)
    assert record is not None and record.record.summary == SUMMARY


def test_reserved_then_started_is_running_and_a_success_completes_it(q: Driver) -> None:
    job_id = run(q)
    q.connect("worker")
    q.reserve("worker")
    assert status(q, job_id) == (INITIALIZING, "reserved", 0)  # reserved, not started yet
    assert start(q, job_id) == r.JobStarted(stop_requested=False)
    assert status(q, job_id) == (RUNNING, "reserved", 0)
    assert end(q, job_id, OK_RESULT) == r.Ok()
    q.delete("worker", job_id)
    assert status(q, job_id) == (COMPLETED, "", 0)


def test_a_failure_with_retries_waits_then_runs_again_and_fails_for_good(q: Driver) -> None:
    job_id = run(q)
    q.connect("worker")
    q.reserve("worker")
    start(q, job_id)
    end(q, job_id, AttemptResult("exited", exit_code=3), final=False)
    q.do(c.Release("worker", job_id, 1024, 5_000))
    assert status(q, job_id) == (INITIALIZING, "delayed", 0)
    shown = q.machine.job_record(job_id)
    assert shown is not None and shown.record.last == AttemptResult("exited", exit_code=3)
    q.advance(5_000).tick()
    q.reserve("worker")
    start(q, job_id, attempt=2)
    assert status(q, job_id) == (RUNNING, "reserved", 0)
    end(q, job_id, AttemptResult("exited", exit_code=4), attempt=2)
    q.do(c.Bury("worker", job_id, 1024))
    assert status(q, job_id) == (FAILED, "", 4)


@pytest.mark.parametrize(
    "result",
    [
        AttemptResult("oom", signal=9, oom_killed=True),
        AttemptResult("timeout", timed_out=True),
        AttemptResult("signaled", signal=11),
        AttemptResult("failed_to_start", error="no such file"),
    ],
)
def test_oom_timeout_signal_and_failure_to_start_are_failed_with_exit_code_minus_one(
    q: Driver, result: AttemptResult
) -> None:
    job_id = run(q)
    q.connect("worker")
    q.reserve("worker")
    start(q, job_id)
    end(q, job_id, result)
    assert status(q, job_id) == (FAILED, "", -1)


def test_a_worker_that_dies_mid_job_leaves_a_lost_attempt_and_the_next_is_recorded(
    q: Driver,
) -> None:
    job_id = run(q)
    q.connect("dead", "alive")
    q.reserve("dead")
    start(q, job_id, worker="w-dead")
    q.do(c.Disconnect("dead"))  # as its proxy's lease running out, or its TTR passing
    assert status(q, job_id) == (INITIALIZING, "ready", 0)
    q.reserve("alive")
    start(q, job_id, attempt=2, worker="w-alive")
    shown = q.machine.job_record(job_id)
    assert shown is not None
    assert (shown.status, shown.record.lost_attempts, shown.record.worker_id) == (
        RUNNING,
        1,
        "w-alive",
    )
    assert end(q, job_id, OK_RESULT, attempt=1) == r.Ok()  # the dead one's late report: ignored
    assert status(q, job_id)[0] == RUNNING


def test_a_job_put_by_any_client_gets_a_record_when_a_worker_starts_it(q: Driver) -> None:
    q.connect("worker")
    job_id = q.put(body=b'{"command": "true"}').job_id  # type: ignore[union-attr]
    assert q.machine.job_record(job_id) is None
    q.reserve("worker")
    start(q, job_id)
    assert status(q, job_id) == (RUNNING, "reserved", 0)


def test_stopping_a_queued_job_removes_it_from_the_queue(q: Driver) -> None:
    job_id = run(q)
    reply = q.do(c.StopJob(job_id))
    assert isinstance(reply, r.RecordView) and reply.status == STOPPED and reply.exit_code == -1
    assert q.do(c.Peek(job_id)) == r.NotFound()
    assert q.do(c.StopJob(job_id)) == r.NotRunning(job_id, STOPPED)


def test_stopping_a_delayed_or_buried_job_removes_it_too(q: Driver) -> None:
    delayed = q.do(c.RunJob(c.Put("default", 1, 60_000, 60_000, b"{}"), SUMMARY))
    assert isinstance(delayed, r.Inserted)
    buried = run(q)
    q.connect("w")
    q.reserve("w")
    q.do(c.Bury("w", buried, 1))
    for job_id in (delayed.job_id, buried):
        assert status(q, job_id) == (INITIALIZING, q.state_of(job_id), 0)
        q.do(c.StopJob(job_id))
        assert status(q, job_id) == (STOPPED, "", -1)
        assert q.do(c.Peek(job_id)) == r.NotFound()


def test_stopping_a_running_job_tells_its_worker_and_its_end_makes_it_stopped(q: Driver) -> None:
    job_id = run(q)
    q.connect("worker")
    q.reserve("worker")
    start(q, job_id, worker="w1")
    reply = q.do(c.StopJob(job_id))
    assert isinstance(reply, r.RecordView) and reply.status == RUNNING
    assert q.last_wakeups == (r.Wakeup("", "w1", f"stop-{job_id}", r.StopRequested(job_id)),)
    assert q.do(c.StopJob(job_id)) == reply  # asked twice: one wake-up
    assert q.last_wakeups == ()
    end(q, job_id, AttemptResult("stopped", signal=15), final=True)
    assert status(q, job_id) == (STOPPED, "", -1)


def test_a_job_stopped_before_its_worker_starts_it_is_not_started(q: Driver) -> None:
    job_id = run(q)
    q.connect("worker")
    q.reserve("worker")
    q.do(c.StopJob(job_id))
    assert start(q, job_id) == r.JobStarted(stop_requested=True)
    assert status(q, job_id) == (INITIALIZING, "reserved", 0)


def test_a_finished_job_released_by_a_dying_worker_is_not_started_again(q: Driver) -> None:
    job_id = run(q)
    q.connect("w1", "w2")
    q.reserve("w1")
    start(q, job_id)
    end(q, job_id, OK_RESULT)
    q.do(c.Disconnect("w1"))  # died before its delete
    q.reserve("w2")
    assert start(q, job_id, attempt=2, worker="w2") == r.JobStarted(stop_requested=True)
    assert status(q, job_id) == (COMPLETED, "", 0)


def test_a_record_whose_job_a_client_deleted_is_stopped(q: Driver) -> None:
    job_id = run(q)
    q.delete("", job_id)
    assert status(q, job_id) == (STOPPED, "deleted", -1)
    assert q.do(c.StopJob(job_id)) == r.NotRunning(job_id, STOPPED)


def test_stop_and_reports_of_an_unknown_job_are_not_found(q: Driver) -> None:
    assert q.do(c.StopJob(99)) == r.NotFound()
    assert end(q, 99, OK_RESULT) == r.NotFound()
    assert start(q, 99) == r.NotFound()


def finish(q: Driver) -> int:
    job_id = run(q)
    q.do(c.StopJob(job_id))
    return job_id


def test_finished_records_beyond_the_count_are_removed_oldest_first(q: Driver) -> None:
    q.do(c.SetRecordRetention(max_finished=2, max_age_ms=10**9))
    first, second, third = finish(q), finish(q), finish(q)
    assert q.machine.job_record(first) is None
    assert q.machine.job_record(second) is not None and q.machine.job_record(third) is not None
    live = run(q)
    q.do(c.SetRecordRetention(max_finished=0, max_age_ms=10**9))
    assert q.machine.job_record(live) is not None  # a live job's record is never removed
    assert q.machine.record_count() == 1


def test_finished_records_older_than_the_age_are_removed_by_a_tick(q: Driver) -> None:
    q.do(c.SetRecordRetention(max_finished=100, max_age_ms=60_000))
    old = finish(q)
    q.advance(30_000)
    young = finish(q)
    assert q.machine.next_deadline_ms() == 60_000
    q.advance(30_000).tick()
    assert q.machine.job_record(old) is None and q.machine.job_record(young) is not None
    q.advance(30_000).tick()
    assert q.machine.job_record(young) is None
    assert q.machine.next_deadline_ms() is None


def test_retention_refuses_nonsense(q: Driver) -> None:
    reply = q.do(c.SetRecordRetention(max_finished=-1, max_age_ms=0))
    assert isinstance(reply, r.InvalidArgument) and "max_finished" in reply.message


def test_listing_filters_by_status_and_pages_in_id_order(q: Driver) -> None:
    ids = [run(q) for _ in range(5)]
    q.do(c.StopJob(ids[1]))
    q.do(c.StopJob(ids[3]))
    page, after = q.machine.job_records(limit=2)
    assert [v.job_id for v in page] == ids[:2] and after == ids[1]
    page, after = q.machine.job_records(after_id=after, limit=2)
    assert [v.job_id for v in page] == ids[2:4] and after == ids[3]
    page, after = q.machine.job_records(after_id=after, limit=2)
    assert [v.job_id for v in page] == ids[4:] and after == 0
    stopped, _ = q.machine.job_records(frozenset({STOPPED}))
    assert [v.job_id for v in stopped] == [ids[1], ids[3]]


def test_records_survive_a_snapshot_and_a_version_1_snapshot_still_restores(q: Driver) -> None:
    ids = [run(q), finish(q)]
    restored = JobStateMachine.restore(q.machine.snapshot())
    for job_id in ids:
        assert restored.job_record(job_id) == q.machine.job_record(job_id)
    fresh = JobStateMachine()
    data = fresh.snapshot()
    # A version 1 snapshot is this one with the old request window (empty here) where the
    # records section is.
    records_section = 8 + 8 + 4 + 4
    old = struct.pack("<4sH", b"BRSM", 1) + data[6:-records_section] + struct.pack("<I", 0)
    assert JobStateMachine.restore(old).snapshot() == data


def test_every_new_command_and_reply_round_trips_through_the_codec() -> None:
    values = [
        c.RunJob(c.Put("t", 1, 2, 3, b"b"), SUMMARY, "rid"),
        c.ReportJobStart(1, 2, "w", "127.0.0.1:1", SUMMARY, "t", 5),
        c.ReportJobEnd(1, 2, AttemptResult("oom", None, 9, True, False, 1, 2, 3, "e"), True),
        c.StopJob(7),
        c.SetRecordRetention(10, 20),
    ]
    for command in values:
        assert codec.decode_command(codec.encode_command(command)) == command
    q = Driver()
    job_id = run(q)
    view = q.do(c.StopJob(job_id))
    for reply in (view, r.JobStarted(True), r.NotRunning(1, COMPLETED)):
        outcome = r.Outcome(reply, (r.Wakeup("", "w", "x", r.StopRequested(3)),))
        assert codec.decode_outcome(codec.encode_outcome(outcome)) == outcome
