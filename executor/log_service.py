"""A worker's log service (``beanraft.worker.v1.WorkerLogs``): the cluster's nodes read a job's
output from the worker that ran it, to answer joblet's GetJobLogs from any node.

The output is a file the worker appends to as it copies the job's pipes (``executor.output``),
so a reader is a file position and nothing else: any number of readers follow one job, each
at its own pace, and a slow one never slows the job or the others (nothing is buffered for it;
joblet drops slow readers because it buffers in memory). A reader gives the byte offset to
start at, so one that reconnects resumes with nothing missed or repeated. Following ends when
the attempt running on this host ends (its state file goes) and everything written is sent.

Only cluster members and admins may read (mTLS, the role table in ``cluster.auth``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from api import workerlogs_pb2, workerlogs_pb2_grpc
from executor.jobfiles import JobFiles

CHUNK_BYTES = 64 << 10
POLL_S = 0.02  # a line printed is sent within this (the job API's "within 100 ms")


class LogService(workerlogs_pb2_grpc.WorkerLogsServicer):
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    async def ReadLogs(self, request: Any, context: Any) -> AsyncIterator[workerlogs_pb2.LogChunk]:
        if request.job_id <= 0 or request.offset < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id > 0 and offset >= 0")
        files = JobFiles(self.log_dir, request.job_id)
        paths = {"": files.output_path, "stdout": files.stdout_path, "stderr": files.stderr_path}
        path = paths.get(request.stream)
        if path is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stream {request.stream!r}: use '' (both), 'stdout' or 'stderr'",
            )
        assert path is not None
        if not os.path.exists(path) and files.read_state() is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no output of job {request.job_id} on this worker (log dir {self.log_dir}): "
                "it never ran here, or its logs were removed by the retention policy",
            )
        async for chunk in follow(files, path, request.offset, request.follow):
            yield chunk


async def follow(
    files: JobFiles, path: str, offset: int, keep_following: bool
) -> AsyncIterator[workerlogs_pb2.LogChunk]:
    """Chunks of ``path`` from ``offset``; with ``keep_following``, until the attempt running
    here has ended and all it wrote is sent."""
    while True:
        # "Running?" before reading: the last bytes are written before the state file goes.
        running = keep_following and files.read_state() is not None
        data = _read(path, offset)
        if data:
            yield workerlogs_pb2.LogChunk(offset=offset, payload=data)
            offset += len(data)
            continue
        if not running:
            return
        await asyncio.sleep(POLL_S)


def _read(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(CHUNK_BYTES)
    except FileNotFoundError:
        return b""


async def serve(listen: str, log_dir: str, tls_dir: Path | None) -> tuple[grpc.aio.Server, int]:
    """Start the service on ``listen`` (port 0: any free one); return it and its port."""
    from cluster.auth import AioRoleInterceptor

    interceptors = [AioRoleInterceptor.from_tls_dir(tls_dir)] if tls_dir is not None else []
    # The nodes ping every 10 s to tell a live stream from a dead host: allow it.
    options = [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    workerlogs_pb2_grpc.add_WorkerLogsServicer_to_server(LogService(log_dir), server)
    if tls_dir is None:
        port = server.add_insecure_port(listen)
    else:
        from api.tls import server_credentials

        port = server.add_secure_port(listen, server_credentials(tls_dir, "worker"))
    if port == 0:
        raise OSError(f"cannot listen on {listen} for the worker's log service")
    await server.start()
    return server, port
