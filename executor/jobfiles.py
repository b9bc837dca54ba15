"""The per-job files in a worker host's log directory: the contract between a worker and the
`beanraft logs` and `beanraft stop` commands on the same host.

    job-<id>.stdout.log     the job's stdout, append-only across attempts, at most
                            limits.log_mb per attempt (copied by the worker from a pipe)
    job-<id>.stderr.log     its stderr, the same way
    job-<id>.output.log     both, in the order the worker read them (the job API's merged
                            stream, served with byte offsets by the worker's log service)
    job-<id>.worker.log     the worker's notes about the job ("buried: ...", "dropped ..."):
                            a channel of its own, so a job cannot forge or erase them
    job-<id>.results.jsonl  one result record per attempt, append-only
    job-<id>.state.json     present only while an attempt runs: worker pid, the job's init pid,
                            its cgroup directories (written atomically by rename)
    job-<id>.stop           a stop intent written by `beanraft stop`, so the worker records the
                            attempt as stopped rather than as killed by a signal

stdout and stderr stay separate files (joblet merged them into one pipe).

Retention (`sweep`): per job, output is bounded by limits.log_mb per attempt per stream; per
host, the worker removes whole finished jobs older than its retention period, then the oldest
finished jobs until the directory fits its byte bound. A job's files go together, so the job API
never serves half a job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LOG_DIR = "/var/log/beanraft"


def default_log_dir() -> str:
    """$BEANRAFT_LOG_DIR, else the one `beanraft up` recorded in the client file
    (``cluster.client_config``), else /var/log/beanraft."""
    from cluster import client_config

    return os.environ.get("BEANRAFT_LOG_DIR") or client_config.log_dir() or DEFAULT_LOG_DIR


@dataclass(frozen=True)
class JobFiles:
    """Paths and small helpers for one job id in one log directory."""

    log_dir: str
    job_id: int

    def _path(self, suffix: str) -> str:
        return os.path.join(self.log_dir, f"job-{self.job_id}.{suffix}")

    @property
    def stdout_path(self) -> str:
        return self._path("stdout.log")

    @property
    def stderr_path(self) -> str:
        return self._path("stderr.log")

    @property
    def output_path(self) -> str:
        return self._path("output.log")

    @property
    def notes_path(self) -> str:
        return self._path("worker.log")

    @property
    def results_path(self) -> str:
        return self._path("results.jsonl")

    @property
    def state_path(self) -> str:
        return self._path("state.json")

    @property
    def stop_path(self) -> str:
        return self._path("stop")

    def note(self, message: str) -> None:
        """Append a line from the worker to the job's notes (never to the job's own streams)."""
        _append(self.notes_path, f"beanraft: {message}\n")

    def note_attempt_start(self, attempt: int) -> int:
        """Mark where an attempt's output begins in each log, so retries' output, appended to
        the same files, can be told apart (the marks are the worker's, in its own file).
        Returns where it begins in the merged output."""
        sizes = []
        for name, path in (
            ("stdout", self.stdout_path),
            ("stderr", self.stderr_path),
            ("output", self.output_path),
        ):
            try:
                sizes.append(f"{name} byte {os.path.getsize(path)}")
            except FileNotFoundError:
                sizes.append(f"{name} byte 0")
        self.note(f"attempt {attempt} starts at " + ", ".join(sizes))
        return int(sizes[-1].rsplit(" ", 1)[1])

    def output_tail(self, start: int, limit_bytes: int) -> tuple[str, bool]:
        """The last ``limit_bytes`` of the merged output written since ``start`` (this
        attempt's), as text, and whether earlier output was left out."""
        try:
            with open(self.output_path, "rb") as output:
                end = output.seek(0, os.SEEK_END)
                begin = max(start, end - limit_bytes)
                output.seek(begin)
                data = output.read(end - begin)
        except FileNotFoundError:
            return "", False
        return data.decode(errors="replace"), begin > start

    def append_result(self, record: dict[str, Any]) -> None:
        _append(self.results_path, json.dumps(record, sort_keys=True) + "\n")

    def results(self) -> list[dict[str, Any]]:
        try:
            with open(self.results_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_path)

    def read_state(self) -> dict[str, Any] | None:
        try:
            with open(self.state_path) as f:
                state: dict[str, Any] = json.load(f)
                return state
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def clear_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)

    def request_stop(self) -> None:
        _append(self.stop_path, "stop\n")

    def stop_requested(self) -> bool:
        return os.path.exists(self.stop_path)

    def clear_stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.stop_path)


# job-<id>.<suffix>: ids as JobFiles writes them (ASCII digits); anything else is not ours.
_JOB_FILE_NAME = re.compile(r"job-([0-9]+)\.(.+)", re.ASCII)
# The state file marks a running attempt; write_state's temporary file precedes it.
_STATE_SUFFIX = "state.json"


@dataclass(frozen=True)
class SweepResult:
    """What one retention sweep did, for the worker's log line."""

    jobs_removed: int
    bytes_removed: int
    bytes_kept: int


@dataclass
class _JobGroup:
    """One job's files in a log directory, as the sweep sees them."""

    key: str  # the id as spelled in the names, so job-7 and job-007 never merge
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, size in bytes)
    size_bytes: int = 0
    newest_mtime_s: float = float("-inf")
    running: bool = False

    def add(self, path: str, suffix: str, st: os.stat_result) -> None:
        self.files.append((path, st.st_size))
        self.size_bytes += st.st_size
        self.newest_mtime_s = max(self.newest_mtime_s, st.st_mtime)
        if suffix == _STATE_SUFFIX or suffix.startswith(_STATE_SUFFIX + "."):
            self.running = True


def clear_stale_states(log_dir: str) -> int:
    """Remove state files whose worker is gone (killed with -9 mid-job): they would make the
    job look running forever, to `beanraft logs -f`, to the log service and to the sweep.
    Returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        match = _JOB_FILE_NAME.fullmatch(name)
        if match is None or match.group(2) != _STATE_SUFFIX:
            continue
        path = os.path.join(log_dir, name)
        state = JobFiles(log_dir, int(match.group(1))).read_state()
        pid = state.get("worker_pid") if state else None
        if isinstance(pid, int) and _alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(log_dir: str, max_age_s: float, max_bytes: int, now_s: float) -> SweepResult:
    """Bound a worker host's job output by age and by total size, so a long-lived worker never
    fills its disk and the job API serves a finished job's output for a known period.

    A job's age is that of its newest file (its last write: the end of its last attempt).
    Whole jobs go, never single files. A running job (it has a state file) is never removed,
    but its bytes count towards max_bytes, so the total can stay above the bound while it runs.
    A missing directory is an empty one; a file that vanishes meanwhile is already gone."""
    groups = _job_groups(log_dir)
    total_bytes = sum(group.size_bytes for group in groups)
    doomed = _choose(groups, max_age_s, max_bytes, now_s, total_bytes)
    bytes_removed = sum(_remove(group) for group in doomed)
    doomed_bytes = sum(group.size_bytes for group in doomed)
    return SweepResult(len(doomed), bytes_removed, total_bytes - doomed_bytes)


def _job_groups(log_dir: str) -> list[_JobGroup]:
    """The regular files named job-<id>.<suffix> in log_dir, grouped by job."""
    groups: dict[str, _JobGroup] = {}
    try:
        entries = list(os.scandir(log_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _JOB_FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        key, suffix = match.groups()
        groups.setdefault(key, _JobGroup(key)).add(entry.path, suffix, st)
    return list(groups.values())


def _choose(
    groups: list[_JobGroup], max_age_s: float, max_bytes: int, now_s: float, total_bytes: int
) -> list[_JobGroup]:
    """The jobs to remove: oldest first, every expired one, then more while over max_bytes.
    Expired jobs are the oldest, so one walk in age order decides both bounds."""
    finished = sorted(
        (group for group in groups if not group.running),
        key=lambda group: (group.newest_mtime_s, group.key),
    )
    doomed: list[_JobGroup] = []
    kept_bytes = total_bytes
    for group in finished:
        expired = now_s - group.newest_mtime_s > max_age_s
        if not expired and kept_bytes <= max_bytes:
            break
        doomed.append(group)
        kept_bytes -= group.size_bytes
    return doomed


def _remove(group: _JobGroup) -> int:
    """Unlink a job's files; returns the bytes freed (a file gone meanwhile frees nothing)."""
    freed_bytes = 0
    for path, size_bytes in group.files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        freed_bytes += size_bytes
    return freed_bytes


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
