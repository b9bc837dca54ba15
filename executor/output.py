"""A job's stdout or stderr: a pipe the worker reads, copied into the job's log file up to a cap.

The job never holds a descriptor of a host file. With the log file itself as its stdout a job
could fallocate gigabytes on the host's disk at once, truncate the earlier attempts' output, or
write anything into the worker's notes; through a pipe it can only send bytes, and the worker
decides what is kept: the first `cap_bytes` of each stream per attempt. The rest is read and
dropped (never left in the pipe, where the job would block and run into its timeout instead of
finishing), and counted, so the result record says how much was lost.

With `limits.io_bps` the copy is also throttled to that rate (a token bucket holding one
second's worth): the worker stops reading, the pipe fills and the job's writes block, as its
own writes to a disk would under the cgroup's I/O limit. Output is disk I/O the worker does on
the job's behalf, so the job's limit applies to it.
"""

from __future__ import annotations

import contextlib
import os
import time

CHUNK_BYTES = 65536


class OutputPipe:
    """The worker's end of one output stream of one attempt."""

    def __init__(
        self,
        log_path: str,
        cap_bytes: int,
        rate_bps: int | None = None,
        merged_fd: int | None = None,
    ) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self._log_fd = os.open(
            log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        self.cap_bytes = cap_bytes
        self.kept_bytes = 0
        self.dropped_bytes = 0
        self.closed = False
        self.rate_bps = rate_bps
        # The job's stdout and stderr together, in the order the worker read them (joblet's
        # merged stream, served with byte offsets); owned by the caller.
        self._merged_fd = merged_fd
        self._tokens = float(rate_bps or 0)
        self._refilled_ns = time.monotonic_ns()

    @property
    def throttled(self) -> bool:
        """True while the stream has used up its rate: do not wait for it to be readable (it
        may be, and would wake the poller in a loop) until `refill` gives it room."""
        return self.rate_bps is not None and self._tokens < 1

    def refill(self) -> None:
        if self.rate_bps is None:
            return
        now_ns = time.monotonic_ns()
        earned = (now_ns - self._refilled_ns) * self.rate_bps / 1e9
        self._tokens = min(float(self.rate_bps), self._tokens + earned)
        self._refilled_ns = now_ns

    def close_write_end(self) -> None:
        """Close the worker's copy of the job's end, once the launcher holds its own: then EOF
        on the read end means every process of the job has let go of the stream."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pump(self, throttle: bool = True) -> bool:
        """Copy what the pipe holds now, within the rate when `throttle`; False once the job's
        side is closed (EOF)."""
        self.refill()
        while not self.closed:
            size = CHUNK_BYTES
            if throttle and self.rate_bps is not None:
                if self._tokens < 1:
                    return True
                size = min(size, int(self._tokens))
            try:
                chunk = os.read(self.read_fd, size)
            except BlockingIOError:
                return True
            if not chunk:
                self.closed = True
                break
            if self.rate_bps is not None:
                self._tokens -= len(chunk)
            self._keep(chunk)
        return False

    def _keep(self, chunk: bytes) -> None:
        room = max(0, self.cap_bytes - self.kept_bytes)
        kept = chunk[:room]
        if kept:
            _write_all(self._log_fd, kept)
            if self._merged_fd is not None:
                _write_all(self._merged_fd, kept)
            self.kept_bytes += len(kept)
        self.dropped_bytes += len(chunk) - len(kept)

    def close(self) -> None:
        self.close_write_end()
        for fd in (self.read_fd, self._log_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
