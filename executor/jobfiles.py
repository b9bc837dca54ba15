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

stdout and stderr stay separate files (joblet merged them into one pipe, reference §10.13).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_LOG_DIR = "/var/log/beanraft"


def default_log_dir() -> str:
    """$BEANRAFT_LOG_DIR, else /var/log/beanraft."""
    return os.environ.get("BEANRAFT_LOG_DIR", DEFAULT_LOG_DIR)


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


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
