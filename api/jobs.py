"""The Python client of the job API (``joblet.JobletService`` on every node): run, status,
list, stop and logs, async (``AsyncJobClient``) or blocking (``JobClient``).

Any node answers any call. On UNAVAILABLE (a node down, no leader yet) a call moves to the next
address; RunJob carries a request id, so a run retried on another node after an ambiguous
failure creates one job, not two. Other errors are raised as ``JobApiError`` with joblet's
message (``job not found: 7``, ``role viewer is not allowed to perform operation run_job``).

    with JobClient(["127.0.0.1:7001"], Path("data/tls")) as jobs:
        job = jobs.run("python3", ["-c", "print(6 * 7)"], max_memory_mb=256)
        print(jobs.status(job.id).status)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict

from api import joblet_pb2, joblet_pb2_grpc
from api.client import open_channel
from jobqueue.errors import BeanraftError

T = TypeVar("T")
CALL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0  # a stop waits for the worker's grace period
RETRY_FOR_S = 20.0
# 100,000 records in one ListJobs answer are about 10 MB (gRPC's default limit is 4 MB).
MAX_RECEIVE_BYTES = 64 << 20
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class JobApiError(BeanraftError):
    """A refused call: ``code`` is the gRPC status, the message is the server's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class JobInfo:
    """A job's record: joblet's fields, then beanraft's ``details`` (JobDetails as a dict)."""

    id: int
    command: str
    args: tuple[str, ...]
    status: str
    start_time: str
    end_time: str
    exit_code: int
    max_cpu: int
    max_memory_mb: int
    max_iobps: int
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, message: Any) -> JobInfo:
        details = MessageToDict(message.details, preserving_proto_field_name=True)
        return cls(
            id=int(message.id),
            command=message.command,
            args=tuple(message.args),
            status=message.status,
            start_time=message.startTime,
            end_time=message.endTime,
            exit_code=message.exitCode,
            max_cpu=message.maxCPU,
            max_memory_mb=message.maxMemory,
            max_iobps=message.maxIOBPS,
            details=details,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "args": list(self.args),
            "status": self.status,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "exitCode": self.exit_code,
            "maxCPU": self.max_cpu,
            "maxMemory": self.max_memory_mb,
            "maxIOBPS": self.max_iobps,
            "details": self.details,
        }


def run_request(command: str, args: Sequence[str] = (), **options: Any) -> joblet_pb2.RunJobReq:
    """A RunJobReq: joblet's fields (``max_cpu``, ``max_memory_mb``, ``max_iobps``) and
    beanraft's (``cpu_cores``, ``network``, ``env`` as a dict, ``timeout_s``, ``tube``,
    ``priority``, ``delay_s``, ``ttr_s``, ``max_retries``, ``backoff_s``, ``workdir``,
    ``pids``, ``request_id``); a request id is made when none is given."""
    fields: dict[str, Any] = {
        "command": command,
        "args": list(args),
        "maxCPU": options.pop("max_cpu", 0),
        "maxMemory": options.pop("max_memory_mb", 0),
        "maxIOBPS": options.pop("max_iobps", 0),
        "request_id": options.pop("request_id", None) or f"run-{uuid.uuid4().hex}",
    }
    env = options.pop("env", None)
    if env:
        fields["env"] = [f"{k}={v}" for k, v in env.items()]
    fields.update({k: v for k, v in options.items() if v is not None})
    return joblet_pb2.RunJobReq(**fields)


class AsyncJobClient:
    """The job API over grpc.aio; see the module docstring."""

    def __init__(self, addresses: Sequence[str], tls_dir: Path | None, role: str = "admin"):
        if not addresses:
            raise ValueError("no node addresses given")
        self._addresses = list(addresses)
        self._tls_dir = tls_dir
        self._role = role
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred = 0

    def _stub(self, address: str) -> joblet_pb2_grpc.JobletServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = open_channel(address, self._tls_dir, self._role)
            self._channels[address] = channel
        return joblet_pb2_grpc.JobletServiceStub(channel)

    async def _call(self, call: Callable[[joblet_pb2_grpc.JobletServiceStub], Awaitable[T]]) -> T:
        deadline = time.monotonic() + RETRY_FOR_S
        attempt = 0
        while True:
            address = self._addresses[(self._preferred + attempt) % len(self._addresses)]
            try:
                result = await call(self._stub(address))
                self._preferred = (self._preferred + attempt) % len(self._addresses)
                return result
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or time.monotonic() > deadline:
                    raise JobApiError(exc.code(), exc.details() or exc.code().name) from None
            attempt += 1
            if attempt % len(self._addresses) == 0:
                await asyncio.sleep(0.2)

    async def run(self, command: str, args: Sequence[str] = (), **options: Any) -> JobInfo:
        request = run_request(command, args, **options)
        reply = await self._call(lambda s: s.RunJob(request, timeout=CALL_TIMEOUT_S))
        return JobInfo.of(reply)

    async def status(self, job_id: int) -> JobInfo:
        request = joblet_pb2.GetJobStatusReq(id=str(job_id))
        return JobInfo.of(
            await self._call(lambda s: s.GetJobStatus(request, timeout=CALL_TIMEOUT_S))
        )

    async def list(self, statuses: Sequence[str] = (), page_size: int = 1000) -> list[JobInfo]:
        """Every record (of ``statuses``), fetched a page at a time."""
        found: list[JobInfo] = []
        token = ""
        while True:
            request = joblet_pb2.ListJobsReq(
                statuses=list(statuses), page_size=page_size, page_token=token
            )
            page = await self._call(
                lambda s, req=request: s.ListJobsPage(req, timeout=CALL_TIMEOUT_S)  # type: ignore[misc]
            )
            found.extend(JobInfo.of(job) for job in page.jobs)
            token = page.next_page_token
            if not token:
                return found

    async def stop(self, job_id: int) -> dict[str, Any]:
        """Stop a job; its id, status, end time and exit code once stopped."""
        request = joblet_pb2.StopJobReq(id=str(job_id))
        reply = await self._call(lambda s: s.StopJob(request, timeout=STOP_TIMEOUT_S))
        return {
            "id": int(reply.id),
            "status": reply.status,
            "endTime": reply.endTime,
            "exitCode": reply.exitCode,
        }

    async def logs(
        self, job_id: int, offset: int = 0, follow: bool = True, stream: str = ""
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) chunks of the job's output from ``offset``; with ``follow``, live
        until the job ends. A broken stream resumes on another node at the next offset."""
        while True:
            request = joblet_pb2.GetJobLogsReq(
                id=str(job_id), offset=offset, no_follow=not follow, stream=stream
            )
            address = self._addresses[self._preferred % len(self._addresses)]
            try:
                async for chunk in self._stub(address).GetJobLogs(request):
                    if chunk.payload:
                        yield chunk.offset, chunk.payload
                        offset = chunk.offset + len(chunk.payload)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise JobApiError(exc.code(), exc.details() or exc.code().name) from None
                self._preferred += 1
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncJobClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class JobClient:
    """The blocking form of ``AsyncJobClient``: the same methods, run on a private loop."""

    def __init__(self, addresses: Sequence[str], tls_dir: Path | None, role: str = "admin"):
        self._loop = asyncio.new_event_loop()
        self._client = AsyncJobClient(addresses, tls_dir, role)

    def _run(self, work: Awaitable[T]) -> T:
        return self._loop.run_until_complete(work)

    def run(self, command: str, args: Sequence[str] = (), **options: Any) -> JobInfo:
        return self._run(self._client.run(command, args, **options))

    def status(self, job_id: int) -> JobInfo:
        return self._run(self._client.status(job_id))

    def list(self, statuses: Sequence[str] = (), page_size: int = 1000) -> list[JobInfo]:
        return self._run(self._client.list(statuses, page_size))

    def stop(self, job_id: int) -> dict[str, Any]:
        return self._run(self._client.stop(job_id))

    def logs(
        self, job_id: int, offset: int = 0, follow: bool = True, stream: str = ""
    ) -> Iterator[tuple[int, bytes]]:
        chunks = self._client.logs(job_id, offset, follow, stream)
        while True:
            try:
                yield self._run(chunks.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
