"""End to end through beanraft's own beanstalkd front end: `beanraft proxy --standalone` in
front, a real `beanraft worker` behind it, and a producer using the client helper."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenstalk
import pytest

from executor.client import submit, wait_result

pytestmark = pytest.mark.root


@pytest.fixture
def proxy(free_port_and_wait: Any) -> Iterator[tuple[str, int]]:
    free_port, wait_for_port = free_port_and_wait
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
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for_port(port, 30)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(30)


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
