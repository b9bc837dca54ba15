"""``beanraft logs JOB_ID [-f]``: show a job's stdout and stderr logs on this worker host, and
with -f follow them until the job is no longer running here.

The logs are append-only files, so following is reading from the last offset: nothing is replayed
twice and nothing written in between is missed (joblet's follow could miss output written between
its replay and the live stream). Following waits on inotify events for the log directory (a write,
or the state file going away), not on a polling sleep; a 1 s poll timeout is only a safety net.

A job's output is whatever the job wrote, so on a terminal control characters are shown
escaped (``\x1b``), never interpreted: a job must not be able to move the cursor, rewrite the
screen or set the terminal's title in front of the person reading its logs. Into a pipe or a
file the bytes go unchanged. The worker's notes (its own file) follow on stderr.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import re
import select
import sys
from typing import BinaryIO, Protocol

from executor import linux
from executor.jobfiles import JobFiles, default_log_dir

SAFETY_TIMEOUT_MS = 1000
_EVENTS = (
    linux.IN_MODIFY | linux.IN_CLOSE_WRITE | linux.IN_CREATE | linux.IN_DELETE | linux.IN_MOVED_TO
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=int, help="the job's id")
    parser.add_argument("-f", "--follow", action="store_true", help="follow while it runs")
    parser.add_argument("--log-dir", default=default_log_dir(), help="the worker's --log-dir")
    parser.add_argument(
        "--raw", action="store_true", help="write control characters unescaped, even to a terminal"
    )


# C0 controls but newline and tab, DEL, and the C1 controls (U+0080-U+009F: 8-bit CSI and OSC).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...


class RawSink:
    """Bytes unchanged (a pipe or a file)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes) -> None:
        self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


class EscapingSink:
    """For a terminal: UTF-8 decoded incrementally (a character split between two reads is
    kept whole), control characters and undecodable bytes shown as escapes."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")

    def write(self, data: bytes) -> None:
        self._out.write(escape_controls(self._decoder.decode(data)).encode())

    def flush(self) -> None:
        self._out.flush()


def escape_controls(text: str) -> str:
    """Show every control character but newline and tab as a visible escape."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def sink_for(out: BinaryIO, raw: bool) -> Sink:
    return RawSink(out) if raw or not out.isatty() else EscapingSink(out)


def _copy_new(path: str, offset: int, out: Sink) -> int:
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
    if not os.path.isdir(args.log_dir):
        print(f"beanraft logs: {args.log_dir} does not exist (--log-dir)", file=sys.stderr)
        return 1
    if not _started(files) and not args.follow:
        print(f"beanraft logs: no logs for job {args.job_id} in {args.log_dir}", file=sys.stderr)
        return 1
    out = sink_for(sys.stdout.buffer, args.raw)
    err = sink_for(sys.stderr.buffer, args.raw)
    streams = [(files.stdout_path, out), (files.stderr_path, err), (files.notes_path, err)]
    offsets = [0, 0, 0]
    watch = linux.inotify_watch(args.log_dir, _EVENTS) if args.follow else None
    try:
        if watch is not None and not _started(files):
            # Following a job that has not started here yet: wait for it, as `tail -F` would.
            print(f"beanraft logs: waiting for job {args.job_id} to start here", file=sys.stderr)
            while not _started(files):
                _wait_for_change(watch)
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


def _started(files: JobFiles) -> bool:
    return any(os.path.exists(p) for p in (files.stdout_path, files.stderr_path, files.state_path))


def _wait_for_change(watch: int) -> None:
    poller = select.poll()
    poller.register(watch, select.POLLIN)
    if poller.poll(SAFETY_TIMEOUT_MS):
        with contextlib.suppress(BlockingIOError):
            while os.read(watch, 65536):
                pass
