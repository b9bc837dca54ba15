"""A worker's channel to the cluster's job records: it reports each attempt's start and end,
and hears of stop requests, so that the job API (``beanraft job``, joblet's JobletService) can
show and stop jobs from any node.

Theory of operation. The worker's slots are threads that speak beanstalkd; this channel is one
asyncio loop in a thread of its own, holding a ``RemoteQueue`` (the same client a proxy uses,
with the worker's certificate): reports are ``ReportJobStart`` and ``ReportJobEnd`` commands
applied over it, retried on another node with the same request id when a node fails, so a
report is applied once. Stop requests arrive as ``StopRequested`` wake-ups addressed to the
worker's id on the resumable wake-up stream, so one sent while the stream moves between nodes is
not lost. A slot asks ``stop_requested(job_id)`` on every tick of its wait loop.

Order: a slot reports an attempt's end before it deletes, buries or releases the job, so a job
that left the queue always has a final record (``cluster.job_records``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog

from api.client import RemoteQueue
from executor import log_service
from jobqueue.interface import QueueUnavailable
from statemachine import commands as c
from statemachine import replies as r
from statemachine.records import AttemptResult, JobSummary

log = structlog.get_logger("executor.reporter")

T = TypeVar("T")
REPORT_TIMEOUT_S = 30.0


class JobReporter:
    """The channel, and the worker's log service (``executor.log_service``) on ``log_listen``
    in the same loop: its address goes into every start report, so any node can find the
    output of a job this worker ran."""

    def __init__(
        self,
        addresses: list[str],
        tls_dir: Path | None,
        worker_id: str,
        log_dir: str,
        log_listen: str = "127.0.0.1:0",
    ) -> None:
        self.worker_id = worker_id
        self._stops: set[int] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reporter", daemon=True)
        self._thread.start()
        host = log_listen.rpartition(":")[0]
        self._server, port = self._call(log_service.serve(log_listen, log_dir, tls_dir))
        self.log_address = f"{host}:{port}"
        self._queue: RemoteQueue = self._call(self._open(addresses, tls_dir))

    async def _open(self, addresses: list[str], tls_dir: Path | None) -> RemoteQueue:
        queue = RemoteQueue(addresses, tls_dir, "worker")
        queue.subscribe(self.worker_id, self._on_wakeup)
        return queue

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(REPORT_TIMEOUT_S)

    def _on_wakeup(self, wakeup: r.Wakeup) -> None:
        if isinstance(wakeup.result, r.StopRequested):
            log.info("stop requested through the cluster", job_id=wakeup.result.job_id)
            with self._lock:
                self._stops.add(wakeup.result.job_id)

    def stop_requested(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._stops

    def start_attempt(
        self, job_id: int, attempt: int, summary: JobSummary, tube: str, priority: int
    ) -> bool:
        """Report that the attempt starts; True when the job must not run (stopped, or
        already settled). A report that cannot be made is logged and the job runs."""
        command = c.ReportJobStart(
            job_id, attempt, self.worker_id, self.log_address, summary, tube, priority
        )
        reply = self._apply(command)
        return isinstance(reply, r.JobStarted) and reply.stop_requested

    def end_attempt(self, job_id: int, attempt: int, result: AttemptResult, final: bool) -> None:
        self._apply(c.ReportJobEnd(job_id, attempt, result, final))
        with self._lock:
            self._stops.discard(job_id)

    def _apply(self, command: c.Command) -> r.Reply | None:
        try:
            return self._call(self._queue.apply(command))
        except (QueueUnavailable, PermissionError, TimeoutError) as exc:
            log.warning(
                "could not report to the cluster; the job's record will lag",
                command=type(command).__name__,
                error=str(exc),
            )
            return None

    def close(self) -> None:
        try:
            self._call(self._queue.close())
            self._call(self._server.stop(1.0))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
