"""A small client helper for Python producers: validate a job spec and put it, and collect a
result record from a result tube. Plain beanstalkd protocol (greenstalk), so it works against
a beanraft proxy or any beanstalkd.

    from executor.client import submit, wait_result
    job_id = submit(("127.0.0.1", 11300), {"command": "echo", "args": ["hi"],
                                           "result_tube": "results"})
    record = wait_result(("127.0.0.1", 11300), "results", job_id, timeout_s=60)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import greenstalk

from cluster.jobspec import JobSpec, spec_from_dict

DEFAULT_TTR_S = 60
DEFAULT_PRIORITY = 1024
# A record with one of these actions is a job's last: it was deleted (exit 0) or buried.
# "release", "release_on_shutdown" and "none" (a lost reservation) mean another attempt follows.
FINAL_ACTIONS = ("delete", "bury")


def parse_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT" -> (host, port), with a clear error for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def submit(
    address: tuple[str, int],
    spec: JobSpec | Mapping[str, Any],
    tube: str = "default",
    priority: int = DEFAULT_PRIORITY,
    delay_s: int = 0,
    ttr_s: int = DEFAULT_TTR_S,
) -> int:
    """Validate `spec` (raises SpecError) and put it; returns the job id."""
    valid = spec if isinstance(spec, JobSpec) else spec_from_dict(spec)
    body = json.dumps(valid.to_json(), sort_keys=True)
    with greenstalk.Client(address, use=tube) as client:
        return int(client.put(body, priority=priority, delay=delay_s, ttr=ttr_s))


def wait_result(
    address: tuple[str, int], result_tube: str, job_id: int, timeout_s: float
) -> dict[str, Any]:
    """Reserve from `result_tube` until the final record for `job_id` arrives; that job's
    records are deleted, other jobs' records released untouched. Raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    others: list[greenstalk.Job[str]] = []
    with greenstalk.Client(address, watch=result_tube) as client:
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    job = client.reserve(timeout=max(1, int(left)))
                except greenstalk.TimedOutError:
                    continue
                record: dict[str, Any] = json.loads(job.body)
                if record.get("job_id") != job_id:
                    others.append(job)
                    continue
                client.delete(job)  # ours: an attempt to be retried, or the final one
                if record.get("action") in FINAL_ACTIONS:
                    return record
        finally:
            for job in others:
                client.release(job)
    raise TimeoutError(f"no result for job {job_id} in tube {result_tube!r} in {timeout_s}s")
