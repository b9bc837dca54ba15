"""``beanraft logs JOB_ID [-f]``: show a job's stdout and stderr logs on this worker host, and
with -f follow them until the job is no longer running here.

The logs are append-only files, so following is reading from the last offset: nothing is
replayed twice and nothing written in between is missed (joblet's replay gap, reference §10.9).
Following waits on inotify events for the log directory (a write, or the state file going
away), not on a polling sleep; a 1 s poll timeout is only a safety net.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
from typing import BinaryIO

from executor import linux
from executor.jobfiles import JobFiles, default_log_dir

SAFETY_TIMEOUT_MS = 1000
_EVENTS = (
    linux.IN_MODIFY | linux.IN_CLOSE_WRITE | linux.IN_CREATE | linux.IN_DELETE | linux.IN_MOVED_TO
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=int)
    parser.add_argument("-f", "--follow", action="store_true", help="follow while it runs")
    parser.add_argument("--log-dir", default=default_log_dir())


def _copy_new(path: str, offset: int, out: BinaryIO) -> int:
    """Copy bytes of `path` from `offset` to `out`; return the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(65536):
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return offset
    out.flush()
    return offset


def run(args: argparse.Namespace) -> int:
    files = JobFiles(args.log_dir, args.job_id)
    if not any(os.path.exists(p) for p in (files.stdout_path, files.stderr_path, files.state_path)):
        print(f"beanraft logs: no logs for job {args.job_id} in {args.log_dir}", file=sys.stderr)
        return 1
    streams = [(files.stdout_path, sys.stdout.buffer), (files.stderr_path, sys.stderr.buffer)]
    offsets = [0, 0]
    watch = linux.inotify_watch(args.log_dir, _EVENTS) if args.follow else None
    try:
        while True:
            # Read "running?" before copying, so the last bytes written before exit are copied.
            running = files.read_state() is not None
            for i, (path, out) in enumerate(streams):
                offsets[i] = _copy_new(path, offsets[i], out)
            if watch is None or not running:
                return 0
            _wait_for_change(watch)
    finally:
        if watch is not None:
            os.close(watch)


def _wait_for_change(watch: int) -> None:
    poller = select.poll()
    poller.register(watch, select.POLLIN)
    if poller.poll(SAFETY_TIMEOUT_MS):
        with contextlib.suppress(BlockingIOError):
            while os.read(watch, 65536):
                pass
