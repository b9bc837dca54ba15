"""End to end through beanraft's own beanstalkd front end: `beanraft proxy --standalone` in
front, a real `beanraft worker` behind it, and a producer using the client helper."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from harness import Process

from executor.client import submit, wait_result


def results(log_dir: Path, job_id: int) -> list[dict[str, Any]]:
    path = log_dir / f"job-{job_id}.results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


pytestmark = pytest.mark.root


@pytest.fixture
def proxy(free_port_and_wait: Any, tmp_path: Path) -> Iterator[tuple[str, int]]:
    free_port, _ = free_port_and_wait
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "beanraft",
        "proxy",
        "--standalone",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = Process(cmd, tmp_path / "proxy.log", "proxy")
    try:
        proc.wait_for_port(port, 30)
        yield ("127.0.0.1", port)
    finally:
        proc.stop(grace_s=30)


def test_job_longer_than_its_ttr_runs_once_through_the_proxy_and_reports_its_result(
    proxy: tuple[str, int], worker_for: Any
) -> None:
    worker = worker_for(proxy)
    job_id = submit(
        proxy,
        {"command": "/bin/sh", "args": ["-c", "sleep 4; exit 3"], "result_tube": "results"},
        ttr_s=2,
    )
    record = wait_result(proxy, "results", job_id, timeout_s=60)
    assert (record["status"], record["exit_code"], record["action"]) == ("exited", 3, "bury")
    assert record["attempt"] == 1  # touched, never given back to anyone
    assert record["duration_ms"] >= 4000
    with greenstalk.Client(proxy) as client:
        assert client.stats_job(job_id)["state"] == "buried"
    assert worker.proc.poll() is None


@pytest.mark.slow
def test_frozen_worker_job_comes_back_after_its_ttr_and_is_not_run_twice(
    proxy: tuple[str, int], worker_for: Any, wait_until: Any
) -> None:
    """A worker that stops touching (SIGSTOP: its connection stays open) loses the job after
    its TTR, and when it wakes up its refused touch makes it stop its copy.

    Through the proxy, not beanstalkd 1.12: beanstalkd never times out a job that it handed to
    a client waiting in reserve-with-timeout (time-left goes negative, the job stays reserved)."""
    worker = worker_for(proxy, "--grace", "1")
    with greenstalk.Client(proxy) as client:
        job_id = client.put(json.dumps({"command": "/bin/sleep", "args": ["300"]}), ttr=2)
        state = worker.log_dir / f"job-{job_id}.state.json"
        wait_until(state.exists, 30, "the job to start")
        worker.proc.send_signal(signal.SIGSTOP)  # connection open, no more touches
        stopped_at = time.monotonic()
        try:
            taken = client.reserve(timeout=30)
            assert taken.id == job_id
            assert time.monotonic() - stopped_at >= 1.0  # it came back by its TTR
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        # The woken worker's touch is refused: it stops its copy instead of running it twice.
        # Its record comes after its state file is cleared: wait for the record.
        (record,) = wait_until(
            lambda: results(worker.log_dir, job_id), 30, "the stale run's record"
        )
        assert not state.exists()
        assert (record["status"], record["action"]) == ("lost_reservation", "none")
        client.delete(taken)
