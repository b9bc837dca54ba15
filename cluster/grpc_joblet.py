"""The ``joblet.JobletService`` servicer: joblet's job API, served by every node.

RunJob validates the request as a job spec (``cluster.jobspec``, the workers' own parser), then
applies one ``RunJob`` command: the job is put and its record made in the same log entry.
GetJobStatus and ListJobs read this node's replica (``cluster.job_records``); StopJob applies
``StopJob`` and, for a running job, waits for its worker to report the end (joblet's StopJob
returns once the job is stopped), up to ``STOP_WAIT_S``. Errors read as joblet's:
``job not found: 999``, ``job is not running: 123 (current status: COMPLETED)``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from api import joblet_pb2, joblet_pb2_grpc, workerlogs_pb2, workerlogs_pb2_grpc
from cluster import errors
from cluster.grpc_jsm import AnyCtx, Ctx, guarded
from cluster.job_records import list_now, off_loop, summary_of, view_now
from cluster.jobspec import JobSpec, SpecError, spec_from_dict
from cluster.service import QueueService
from statemachine import commands as c
from statemachine import replies as r
from statemachine.records import FINAL_STATUSES, RUNNING, STATUSES, RecordView

log = structlog.get_logger(__name__)

DEFAULT_TUBE = "default"
DEFAULT_PRIORITY = 1024
DEFAULT_TTR_S = 60
# A stop waits for the worker: SIGTERM, its grace period (5 s by default), SIGKILL, the report.
STOP_WAIT_S = 10.0
STOP_POLL_S = 0.05
LOGS_POLL_S = 0.1  # a job waiting to start, or to be retried


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as joblet writes times; "" for 0 (not yet)."""
    if ms <= 0:
        return ""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def job_fields(view: RecordView) -> dict[str, Any]:
    """joblet's ten fields of a Job, from a record and its status."""
    record = view.record
    summary = record.summary
    ended = record.ended_ms if view.status in FINAL_STATUSES else 0
    return {
        "id": str(record.job_id),
        "command": summary.command,
        "args": list(summary.args),
        "maxCPU": summary.max_cpu,
        "maxMemory": summary.max_memory_mb,
        "maxIOBPS": summary.max_iobps,
        "status": view.status,
        "startTime": rfc3339(record.started_ms),
        "endTime": rfc3339(ended),
        "exitCode": view.exit_code,
    }


def details(view: RecordView) -> joblet_pb2.JobDetails:
    record = view.record
    summary = record.summary
    last = record.last
    return joblet_pb2.JobDetails(
        cpu_cores=summary.cpu_cores,
        pids=summary.pids,
        timeout_s=summary.timeout_s,
        network=summary.network,
        env=list(summary.env),
        workdir=summary.workdir,
        max_retries=summary.max_retries,
        tube=record.tube,
        priority=record.priority,
        queue_state=view.queue_state,
        waiting_retry=view.queue_state == "delayed" and last is not None,
        attempt=record.attempt,
        lost_attempts=record.lost_attempts,
        worker_id=record.worker_id,
        stop_requested=record.stop_requested,
        result=last.result if last else "",
        signal=last.signal if last else 0,
        oom_killed=last.oom_killed if last else False,
        timed_out=last.timed_out if last else False,
        duration_ms=last.duration_ms if last else 0,
        peak_memory_bytes=last.peak_memory_bytes if last else 0,
        cpu_time_ms=last.cpu_time_ms if last else 0,
        error=last.error if last else "",
        created_time=rfc3339(record.created_ms),
        log_address=record.log_address,
    )


def spec_body(request: joblet_pb2.RunJobReq) -> tuple[JobSpec, bytes]:
    """The job spec a RunJob request asks for, validated, and the body the worker reads.
    Raises SpecError (INVALID_ARGUMENT) naming what is wrong."""
    if not request.command.strip():
        raise SpecError("invalid command: command is empty")
    raw: dict[str, Any] = {"command": request.command, "args": list(request.args)}
    limits = {
        "cpu_percent": request.maxCPU,
        "memory_mb": request.maxMemory,
        "io_bps": request.maxIOBPS,
        "pids": request.pids,
        "cpu_cores": request.cpu_cores,
    }
    raw["limits"] = {key: value for key, value in limits.items() if value}
    if request.env:
        raw["env"] = dict(_env_pair(item) for item in request.env)
    for key, value in (
        ("timeout_s", request.timeout_s),
        ("network", request.network),
        ("workdir", request.workdir),
    ):
        if value:
            raw[key] = value
    if request.max_retries or request.backoff_s:
        raw["retry"] = {"max_retries": request.max_retries, "backoff_s": request.backoff_s or 1}
    spec = spec_from_dict(raw)
    return spec, json.dumps(spec.to_json(), sort_keys=True).encode()


def _env_pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise SpecError(f"env: {item!r} is not NAME=value")
    return name, value


def _job_id(text: str) -> int:
    try:
        job_id = int(text)
    except ValueError:
        job_id = -1
    if job_id <= 0:
        raise LookupError(f"job not found: {text}")
    return job_id


class JobletServicer(joblet_pb2_grpc.JobletServiceServicer):
    def __init__(self, service: QueueService) -> None:
        self.service = service
        self.node = service.node

    @property
    def _machine(self) -> Any:
        return self.node.state.machine  # read through the node: a snapshot install replaces it

    async def RunJob(
        self,
        request: joblet_pb2.RunJobReq,
        context: Ctx[joblet_pb2.RunJobReq, joblet_pb2.RunJobRes],
    ) -> joblet_pb2.RunJobRes:
        try:
            spec, body = spec_body(request)
        except SpecError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        put = c.Put(
            tube=request.tube or DEFAULT_TUBE,
            priority=request.priority if request.HasField("priority") else DEFAULT_PRIORITY,
            delay_ms=request.delay_s * 1000,
            ttr_ms=(request.ttr_s if request.HasField("ttr_s") else DEFAULT_TTR_S) * 1000,
            body=body,
        )
        summary = summary_of(spec)
        command = c.RunJob(put, summary, request.request_id)
        outcome, index = await guarded(context, self.service.apply(command, request.request_id))
        reply = outcome.reply
        if not isinstance(reply, r.Inserted):
            await self._abort_for(context, reply)
            raise AssertionError("unreachable")  # abort raises
        await self.node.wait_applied(index)
        view = await self._view(context, reply.job_id)
        log.info("job submitted", job_id=reply.job_id, command=request.command, tube=put.tube)
        return joblet_pb2.RunJobRes(**job_fields(view), details=details(view))

    async def GetJobStatus(
        self,
        request: joblet_pb2.GetJobStatusReq,
        context: Ctx[joblet_pb2.GetJobStatusReq, joblet_pb2.GetJobStatusRes],
    ) -> joblet_pb2.GetJobStatusRes:
        view = await self._view(context, await self._id(context, request.id))
        return joblet_pb2.GetJobStatusRes(**job_fields(view), details=details(view))

    async def StopJob(
        self,
        request: joblet_pb2.StopJobReq,
        context: Ctx[joblet_pb2.StopJobReq, joblet_pb2.StopJobRes],
    ) -> joblet_pb2.StopJobRes:
        job_id = await self._id(context, request.id)
        outcome, index = await guarded(context, self.service.apply(c.StopJob(job_id)))
        reply = outcome.reply
        if isinstance(reply, r.NotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job not found: {job_id}")
        if isinstance(reply, r.NotRunning):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job is not running: {job_id} (current status: {reply.status})",
            )
        await self.node.wait_applied(index)
        view = await self._await_final(context, job_id)
        log.info("job stop requested", job_id=job_id, status=view.status)
        fields = job_fields(view)
        return joblet_pb2.StopJobRes(
            id=fields["id"],
            status=fields["status"],
            endTime=fields["endTime"],
            exitCode=fields["exitCode"],
        )

    async def ListJobs(
        self,
        request: joblet_pb2.EmptyRequest,
        context: Ctx[joblet_pb2.EmptyRequest, joblet_pb2.Jobs],
    ) -> joblet_pb2.Jobs:
        views, _ = await self._list(frozenset(), 0, 0)
        return joblet_pb2.Jobs(jobs=[joblet_pb2.Job(**job_fields(v)) for v in views])

    async def ListJobsPage(
        self,
        request: joblet_pb2.ListJobsReq,
        context: Ctx[joblet_pb2.ListJobsReq, joblet_pb2.Jobs],
    ) -> joblet_pb2.Jobs:
        statuses = frozenset(s.upper() for s in request.statuses)
        unknown = sorted(statuses - set(STATUSES))
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown status {', '.join(unknown)}: use {', '.join(STATUSES)}",
            )
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be >= 0")
        after_id = 0
        if request.page_token:
            if not request.page_token.isdigit():
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"page_token {request.page_token!r} is not one this service gave out",
                )
            after_id = int(request.page_token)
        views, next_after = await self._list(statuses, after_id, request.page_size)
        jobs = [joblet_pb2.Job(**job_fields(v), details=details(v)) for v in views]
        return joblet_pb2.Jobs(jobs=jobs, next_page_token=str(next_after) if next_after else "")

    async def GetJobLogs(
        self,
        request: joblet_pb2.GetJobLogsReq,
        context: Ctx[joblet_pb2.GetJobLogsReq, joblet_pb2.DataChunk],
    ) -> AsyncIterator[joblet_pb2.DataChunk]:
        job_id = await self._id(context, request.id)
        if request.stream not in ("", "stdout", "stderr") or request.offset < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "stream must be '', 'stdout' or 'stderr', and offset at least 0",
            )
        follow = not request.no_follow
        offset, address, read_attempt = request.offset, "", 0
        while True:
            view = await self._view(context, job_id)
            record = view.record
            # Read the latest attempt's worker once; while following, again as long as that
            # attempt runs (its worker may not have started writing when first asked).
            again = follow and view.status == RUNNING and record.attempt == read_attempt
            if record.log_address and (record.attempt > read_attempt or again):
                if address and record.log_address != address:
                    offset = 0  # another host: its own output file
                address, read_attempt = record.log_address, record.attempt
                sent = offset
                async for chunk in self._read_worker(context, view, offset, follow, request.stream):
                    yield joblet_pb2.DataChunk(payload=chunk.payload, offset=chunk.offset)
                    offset = chunk.offset + len(chunk.payload)
                if offset > sent:
                    continue  # the attempt there ended: see whether another follows
            elif not follow or view.status in FINAL_STATUSES:
                return
            await asyncio.sleep(LOGS_POLL_S)  # not started yet, or waiting for a retry

    async def _read_worker(
        self, context: AnyCtx, view: RecordView, offset: int, follow: bool, stream: str
    ) -> AsyncIterator[joblet_pb2.DataChunk]:
        """The job's output from the worker that ran its latest attempt."""
        record = view.record
        channel = self.service.channel(record.log_address)
        request = workerlogs_pb2.ReadLogsRequest(
            job_id=record.job_id, offset=offset, follow=follow, stream=stream
        )
        try:
            async for chunk in workerlogs_pb2_grpc.WorkerLogsStub(channel).ReadLogs(request):
                yield chunk
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return  # nothing there (yet, or any more): the caller decides what follows
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the output of job {record.job_id} is on worker {record.worker_id or '?'} at "
                f"{record.log_address}, which cannot be reached ({exc.code().name}: "
                f"{exc.details()}); try again when that worker is back",
            )

    # --- helpers --------------------------------------------------------------------------

    async def _id(self, context: AnyCtx, text: str) -> int:
        try:
            return _job_id(text)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        raise AssertionError("unreachable")

    async def _view(self, context: AnyCtx, job_id: int) -> RecordView:
        view = view_now(self._machine, job_id)
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job not found: {job_id}")
        assert view is not None
        return view

    async def _list(
        self, statuses: frozenset[str], after_id: int, limit: int
    ) -> tuple[list[RecordView], int]:
        machine = self._machine
        return await off_loop(lambda: list_now(machine, statuses, after_id, limit))

    async def _await_final(self, context: AnyCtx, job_id: int) -> RecordView:
        """The job's record once its status is final, or as it is after ``STOP_WAIT_S``."""
        deadline = self.node.loop.time() + STOP_WAIT_S
        while True:
            view = await self._view(context, job_id)
            if view.status in FINAL_STATUSES or self.node.loop.time() >= deadline:
                return view
            await asyncio.sleep(STOP_POLL_S)

    async def _abort_for(self, context: AnyCtx, reply: r.Reply) -> None:
        if isinstance(reply, r.JobTooBig):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "job creation failed: the job spec is larger than the cluster's max job size",
            )
        status = errors.status_for_reply(reply)
        code, message = status if status is not None else (grpc.StatusCode.INTERNAL, repr(reply))
        await context.abort(code, f"job creation failed: {message}")
