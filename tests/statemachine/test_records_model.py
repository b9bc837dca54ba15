"""Job records against a small model, on random sequences: jobs run, reserved by workers that
report starts and ends (or die), released for retries, deleted by plain clients, stopped, with
time passing and retention removing finished records.

The model keeps, per job, only what a user can tell: is a record there, is its status final
and which, was a stop asked, which attempt ran last. After every step the machine's derived
status must agree with it; a final status never changes; a job whose record is final is never
started again; and the machine's invariants and a snapshot round trip hold (the scenario
driver checks both after every command).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scenarios.driver import Driver

from statemachine import commands as c
from statemachine import replies as r
from statemachine.records import (
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    INITIALIZING,
    RUNNING,
    STOPPED,
    AttemptResult,
    JobSummary,
)

WORKERS = ("w0", "w1")
TTR_MS = 60_000
SUMMARY = JobSummary("true")
MAX_AGE_MS = 20_000


@dataclass
class ModelJob:
    final: str = ""  # the settled status, once there is one
    stop_requested: bool = False
    started: int = 0  # the latest attempt a worker started
    ended: int = 0  # the latest attempt whose end was reported
    holder: str = ""  # the worker client that holds the job reserved, "" if none
    reserved_at_ms: int = 0  # when the holder reserved it: its TTR runs from there
    gone: bool = False  # left the queue
    finished_at_ms: int = 0


class Records(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.q = Driver()
        self.q.do(c.SetRecordRetention(max_finished=6, max_age_ms=MAX_AGE_MS))
        for worker in WORKERS:
            self.q.connect(worker, proxy=f"proxy-{worker}")
        self.jobs: dict[int, ModelJob] = {}

    # --- helpers ----------------------------------------------------------------------------

    def _ids(self) -> list[int]:
        return sorted(self.jobs)

    def _place(self, job_id: int) -> str:
        stats = self.q.do(c.StatsJob(job_id))
        return stats.state if isinstance(stats, r.JobStats) else ""

    def _finish(self, job: ModelJob, status: str) -> None:
        job.final = status
        job.finished_at_ms = self.q.now_ms

    # --- rules --------------------------------------------------------------------------------

    @rule(delay_ms=st.sampled_from([0, 0, 2_000]))
    def run_job(self, delay_ms: int) -> None:
        put = c.Put("work", 1024, delay_ms, TTR_MS, b"{}")
        reply = self.q.do(c.RunJob(put, SUMMARY))
        assert isinstance(reply, r.Inserted)
        self.jobs[reply.job_id] = ModelJob()

    @rule(worker=st.sampled_from(WORKERS))
    def reserve_and_start(self, worker: str) -> None:
        if any(j.holder == worker for j in self.jobs.values()):
            return  # one job per worker connection at a time, as a slot does
        self.q.do(c.Watch(worker, "work"))
        reply = self.q.reserve(worker, 0)
        if not isinstance(reply, r.Reserved):
            return
        job = self.jobs[reply.job_id]
        job.holder, job.reserved_at_ms = worker, self.q.now_ms
        attempt = job.started + 1
        started = self.q.do(
            c.ReportJobStart(reply.job_id, attempt, worker, "", SUMMARY, "work", 1024)
        )
        assert isinstance(started, r.JobStarted)
        must_not_run = bool(job.final) or job.stop_requested
        assert started.stop_requested == must_not_run
        if not must_not_run:
            job.started = attempt

    @rule(
        worker=st.sampled_from(WORKERS),
        outcome=st.sampled_from(["ok", "fail", "fail-retry", "stopped"]),
    )
    def end_attempt(self, worker: str, outcome: str) -> None:
        held = [i for i, j in self.jobs.items() if j.holder == worker]
        if not held:
            return
        job_id = held[0]
        job = self.jobs[job_id]
        if job.final or job.started <= job.ended:
            # Not started here (stopped before it began) or settled already: drop the job.
            self.q.delete(worker, job_id)
            job.holder, job.gone = "", True
            return
        result = {
            "ok": AttemptResult("exited", 0),
            "fail": AttemptResult("exited", 3),
            "fail-retry": AttemptResult("exited", 3),
            "stopped": AttemptResult("stopped", signal=15),
        }[outcome]
        final = outcome != "fail-retry"
        self.q.do(c.ReportJobEnd(job_id, job.started, result, final))
        job.ended = job.started
        if outcome == "stopped" or (job.stop_requested and not final):
            self._finish(job, STOPPED)
        elif final:
            self._finish(job, COMPLETED if outcome == "ok" else FAILED)
        if job.final:
            self.q.delete(worker, job_id)
            job.gone = True
        else:
            self.q.do(c.Release(worker, job_id, 1024, 1_000))
        job.holder = ""

    @rule(worker=st.sampled_from(WORKERS))
    def worker_dies(self, worker: str) -> None:
        self.q.do(c.Disconnect(worker))
        for job in self.jobs.values():
            if job.holder == worker:
                job.holder = ""
        self.q.connect(worker, proxy=f"proxy-{worker}")

    @rule(data=st.data())
    def client_deletes(self, data: st.DataObject) -> None:
        ids = [i for i in self._ids() if not self.jobs[i].gone and not self.jobs[i].holder]
        if not ids:
            return
        job_id = data.draw(st.sampled_from(ids))
        self.q.delete("", job_id)
        self.jobs[job_id].gone = True

    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(self._ids()))
        job = self.jobs[job_id]
        reply = self.q.do(c.StopJob(job_id))
        if self.q.machine.job_record(job_id) is None and not isinstance(reply, r.RecordView):
            return  # removed by retention meanwhile
        if job.final or (job.gone and not job.final):
            assert isinstance(reply, r.NotRunning), reply
            return
        assert isinstance(reply, r.RecordView), reply
        job.stop_requested = True
        if not job.holder:  # queued, delayed or buried: it leaves the queue at once
            self._finish(job, STOPPED)
            job.gone = True

    @rule(step_ms=st.sampled_from([500, 1_500, 8_000]))
    def time_passes(self, step_ms: int) -> None:
        self.q.advance(step_ms).tick()
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            if job.holder and self.q.now_ms - job.reserved_at_ms >= TTR_MS:
                job.holder = ""  # its TTR ran out: back to ready, the attempt lost
            if job.final and self.q.now_ms - job.finished_at_ms >= MAX_AGE_MS:
                del self.jobs[job_id]  # retention by age removed its record

    # --- what must hold -----------------------------------------------------------------------

    @invariant()
    def statuses_agree_with_the_model(self) -> None:
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            shown = self.q.machine.job_record(job_id)
            if shown is None:
                assert job.final, f"job {job_id}: a live job's record was removed"
                del self.jobs[job_id]  # retention by count removed a finished record
                continue
            if job.final:
                assert shown.status == job.final, (job_id, shown.status, job)
                continue
            if job.gone:
                assert shown.status == STOPPED and shown.queue_state == "deleted"
                continue
            running = bool(job.holder) and job.started > job.ended
            assert shown.status == (RUNNING if running else INITIALIZING), (job_id, shown, job)
            assert shown.record.stop_requested == job.stop_requested
            assert self._place(job_id) == shown.queue_state

    @invariant()
    def final_statuses_are_final(self) -> None:
        for view in self.q.machine.job_records()[0]:
            if view.record.final_status:
                assert view.status in FINAL_STATUSES


TestRecords = Records.TestCase
TestRecords.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
