"""The worker pool end to end: a real beanstalkd, a real `beanraft worker` process, real
greenstalk clients, and the `beanraft submit/logs/stop` commands."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from harness import Process

from executor.client import submit, wait_result

pytestmark = [pytest.mark.root, pytest.mark.beanstalkd]


def sh(script: str, **extra: object) -> dict[str, object]:
    return {"command": "/bin/sh", "args": ["-c", script], **extra}


def beanraft(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beanraft", *args], capture_output=True, text=True, timeout=timeout_s
    )


def results(log_dir: Any, job_id: int) -> list[dict[str, Any]]:
    path = log_dir / f"job-{job_id}.results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_successful_job_is_deleted_and_its_result_reaches_the_result_tube(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker()
    job_id = submit(beanstalkd, sh("echo out; echo err >&2", result_tube="results"))
    record = wait_result(beanstalkd, "results", job_id, timeout_s=30)
    assert record["status"] == "exited" and record["exit_code"] == 0
    assert record["action"] == "delete"
    assert record["worker_id"].endswith(f":{worker.proc.pid}")
    for key in ("duration_ms", "peak_memory_bytes", "cpu_time_ms", "signal", "oom_killed"):
        assert key in record
    # The record is put before the delete, so a crash in between cannot lose it.
    wait_until(lambda: job_state(beanstalkd, job_id) is None, 30, "the job to be deleted")
    assert (worker.log_dir / f"job-{job_id}.stdout.log").read_text() == "out\n"
    assert (worker.log_dir / f"job-{job_id}.stderr.log").read_text() == "err\n"


def test_a_worker_given_several_addresses_moves_past_one_that_refuses(
    beanstalkd: Any, worker_for: Any, free_port_and_wait: Any
) -> None:
    # As `beanraft up` runs it: every node's listener, in turn; here the first one is down.
    free_port, _ = free_port_and_wait
    dead = f"127.0.0.1:{free_port()}"
    worker = worker_for(f"{dead},{beanstalkd[0]}:{beanstalkd[1]}")
    job_id = submit(beanstalkd, sh("echo moved on", result_tube="results"))
    record = wait_result(beanstalkd, "results", job_id, timeout_s=30)
    assert record["status"] == "exited" and record["exit_code"] == 0
    assert (worker.log_dir / f"job-{job_id}.stdout.log").read_text() == "moved on\n"
    assert "cannot reach beanstalkd" in worker.log() and dead in worker.log()


def test_bad_spec_is_buried_with_a_reason_and_the_worker_goes_on(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker()
    with greenstalk.Client(beanstalkd) as client:
        bad_id = client.put("this is not a job spec")
        root_id = client.put(json.dumps({"command": "true", "run_as_root": True}))
    good_id = submit(beanstalkd, sh("true"))
    wait_until(lambda: job_state(beanstalkd, good_id) is None, 30, "the good job to finish")
    assert job_state(beanstalkd, bad_id) == "buried"
    assert job_state(beanstalkd, root_id) == "buried"
    (bad,) = results(worker.log_dir, bad_id)
    assert bad["status"] == "invalid_spec" and "not JSON" in bad["error"]
    (root,) = results(worker.log_dir, root_id)
    assert "allow-root" in root["error"]
    assert "invalid job spec" in (worker.log_dir / f"job-{bad_id}.worker.log").read_text()
    assert worker.proc.poll() is None


def test_failing_job_is_released_with_backoff_while_retries_remain_then_buried(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker()
    job_id = submit(beanstalkd, sh("echo try; exit 5", retry={"max_retries": 1, "backoff_s": 1}))
    wait_until(lambda: job_state(beanstalkd, job_id) == "buried", 30, "the job to be buried")
    # Each attempt's output is marked in the worker's notes: where it starts in each log.
    notes = (worker.log_dir / f"job-{job_id}.worker.log").read_text().splitlines()
    assert notes == [
        "beanraft: attempt 1 starts at stdout byte 0, stderr byte 0, output byte 0",
        "beanraft: attempt 2 starts at stdout byte 4, stderr byte 0, output byte 4",
    ]
    records = results(worker.log_dir, job_id)
    assert [r["action"] for r in records] == ["release", "bury"]
    assert all(r["exit_code"] == 5 for r in records)
    assert [r["attempt"] for r in records] == [1, 2]
    assert records[1]["finished_at_ms"] - records[0]["finished_at_ms"] >= 900  # the back-off


def test_ten_second_job_with_three_second_ttr_stays_reserved(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    start_worker()
    with greenstalk.Client(beanstalkd) as client:
        body = json.dumps({"command": "/bin/sleep", "args": ["10"]})
        job_id = client.put(body, ttr=3)
        wait_until(lambda: job_state(beanstalkd, job_id) == "reserved", 30, "a reservation")
        for _ in range(8):  # well past several TTRs
            time.sleep(1)  # the scenario: TTRs elapse while the worker keeps touching
            stats = client.stats_job(job_id)
            assert stats["state"] == "reserved"
            assert stats["reserves"] == 1 and stats["timeouts"] == 0
    wait_until(lambda: job_state(beanstalkd, job_id) is None, 30, "the job to be deleted")


@pytest.mark.slow
def test_killed_worker_loses_nothing_job_comes_back_and_cgroups_are_swept(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any, cgroup_root: str
) -> None:
    worker = start_worker()
    with greenstalk.Client(beanstalkd) as client:
        job_id = client.put(json.dumps({"command": "/bin/sleep", "args": ["300"]}), ttr=2)
    state_file = worker.log_dir / f"job-{job_id}.state.json"
    state = wait_until(lambda: state_file.exists() and json.loads(state_file.read_text()), 30, "")
    job_dirs = list(state["cgroup"]["dirs"].values())
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    # The job's processes die with the worker (PR_SET_PDEATHSIG); beanstalkd gives it back.
    wait_until(lambda: job_state(beanstalkd, job_id) == "ready", 15, "the job to come back")
    wait_until(lambda: not _procs(job_dirs), 15, "the job's processes to die")
    worker_dirs = {os.path.dirname(d) for d in job_dirs}
    assert all(os.path.isdir(d) for d in worker_dirs)  # left behind by the crash...
    with greenstalk.Client(beanstalkd) as client:
        again = client.reserve(timeout=5)  # any client can take the job again
        assert again.id == job_id
        client.delete(again)
    second = start_worker()
    # ...and swept by the next worker on this host at its start.
    wait_until(lambda: not any(os.path.isdir(d) for d in worker_dirs), 30, "the sweep")
    assert second.stop() == 0
    assert "swept stale worker cgroups" in second.log()


def _procs(dirs: list[str]) -> list[str]:
    found = []
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found.extend(f.read().split())
        except OSError:
            pass
    return found


def test_sigterm_lets_the_worker_stop_and_release_its_unfinished_job(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker("--shutdown-grace", "1", "--grace", "1")
    job_id = submit(beanstalkd, sh("sleep 300"))
    wait_until(lambda: job_state(beanstalkd, job_id) == "reserved", 30, "a reservation")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert job_state(beanstalkd, job_id) == "ready"
    (record,) = results(worker.log_dir, job_id)
    assert record["action"] == "release_on_shutdown"


def test_stop_command_stops_a_running_job_and_it_is_buried_as_stopped(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker()
    job_id = submit(beanstalkd, sh("trap '' TERM; echo started; sleep 300 & wait"))
    state_file = worker.log_dir / f"job-{job_id}.state.json"
    wait_until(state_file.exists, 30, "the job to start")
    done = beanraft("stop", str(job_id), "--log-dir", str(worker.log_dir), "--grace", "1")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: job_state(beanstalkd, job_id) == "buried", 30, "the job to be buried")
    (record,) = results(worker.log_dir, job_id)
    assert record["status"] == "stopped" and record["stopped"]
    again = beanraft("stop", str(job_id), "--log-dir", str(worker.log_dir))
    assert again.returncode == 1 and "not running" in again.stderr


def test_logs_command_shows_and_follows_a_running_job(
    beanstalkd: Any, start_worker: Any, wait_until: Any
) -> None:
    worker = start_worker()
    job_id = submit(beanstalkd, sh("for i in 1 2 3; do echo line$i; sleep 0.5; done; echo e >&2"))
    wait_until((worker.log_dir / f"job-{job_id}.stdout.log").exists, 30, "the log file")
    followed = beanraft("logs", str(job_id), "-f", "--log-dir", str(worker.log_dir))
    assert followed.returncode == 0
    assert followed.stdout == "line1\nline2\nline3\n"
    # stderr: the job's own, and the worker's notes (the attempt's start mark) after them
    assert sorted(followed.stderr.splitlines()) == sorted(
        ["e", "beanraft: attempt 1 starts at stdout byte 0, stderr byte 0, output byte 0"]
    )
    missing = beanraft("logs", "999999", "--log-dir", str(worker.log_dir))
    assert missing.returncode == 1 and "no logs" in missing.stderr


def test_submit_command_puts_a_valid_spec_and_rejects_a_bad_one(beanstalkd: Any) -> None:
    address = f"{beanstalkd[0]}:{beanstalkd[1]}"
    put = beanraft(
        "submit",
        "--beanstalkd",
        address,
        "--tube",
        "t1",
        "--max-memory",
        "256",
        "--env",
        "A=1",
        "--",
        "echo",
        "hi",
    )
    assert put.returncode == 0, put.stderr
    job_id = json.loads(put.stdout)["job_id"]
    with greenstalk.Client(beanstalkd, watch="t1") as client:
        job = client.reserve(timeout=5)
        assert job.id == job_id
        spec = json.loads(job.body)
    assert spec["command"] == "echo" and spec["args"] == ["hi"]
    assert spec["limits"]["memory_mb"] == 256 and spec["env"] == {"A": "1"}
    bad = beanraft("submit", "--beanstalkd", address, "--max-memory", "1", "--", "true")
    assert bad.returncode == 2 and "memory_mb" in bad.stderr


def test_sigterm_lets_a_running_job_finish_within_the_grace_period(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker("--shutdown-grace", "20")
    job_id = submit(beanstalkd, sh("sleep 1.5; echo finished"))
    wait_until(lambda: job_state(beanstalkd, job_id) == "reserved", 30, "a reservation")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert job_state(beanstalkd, job_id) is None  # finished and deleted, not released
    assert (worker.log_dir / f"job-{job_id}.stdout.log").read_text() == "finished\n"


def test_job_past_its_timeout_is_stopped_reported_and_retried_per_its_policy(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker("--grace", "1")
    spec = sh("sleep 300", timeout_s=1, retry={"max_retries": 1, "backoff_s": 0})
    job_id = submit(beanstalkd, spec)
    wait_until(lambda: job_state(beanstalkd, job_id) == "buried", 60, "the job to be buried")
    records = results(worker.log_dir, job_id)
    assert [(r["status"], r["action"]) for r in records] == [
        ("timeout", "release"),
        ("timeout", "bury"),
    ]
    assert all(r["timed_out"] and r["duration_ms"] >= 1000 for r in records)


def test_pool_runs_jobs_concurrently_and_finishes_every_one(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    worker = start_worker("--concurrency", "4")
    ids = [submit(beanstalkd, sh("sleep 1")) for _ in range(8)]
    wait_until(lambda: all(job_state(beanstalkd, i) is None for i in ids), 60, "all jobs deleted")
    records = [r for i in ids for r in results(worker.log_dir, i)]
    assert len(records) == 8 and all(r["action"] == "delete" for r in records)
    # Intervals [end - duration, end]: at some moment at least two jobs ran at once.
    spans = sorted((r["finished_at_ms"] - r["duration_ms"], r["finished_at_ms"]) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.slow
def test_lost_connection_stops_the_running_job_and_the_worker_reconnects(
    free_port_and_wait: Any, worker_for: Any, wait_until: Any, tmp_path: Path
) -> None:
    free_port, _ = free_port_and_wait
    port = free_port()
    cmd = ["/usr/bin/beanstalkd", "-l", "127.0.0.1", "-p", str(port)]
    server = Process(cmd, tmp_path / "beanstalkd.log", "beanstalkd")
    try:
        server.wait_for_port(port, 10)
        address = ("127.0.0.1", port)
        worker = worker_for(address, "--grace", "1")
        job_id = submit(address, sh("sleep 300"), ttr_s=1)
        state = worker.log_dir / f"job-{job_id}.state.json"
        wait_until(state.exists, 30, "the job to start")
        server.kill()
        # The touch fails: the job is stopped and cleaned up instead of running unowned. The
        # worker clears the attempt's state file before it appends the attempt's record, so
        # the record is what to wait for.
        (record,) = wait_until(lambda: results(worker.log_dir, job_id), 30, "the job's record")
        assert not state.exists()
        assert (record["status"], record["action"]) == ("lost_reservation", "none")
        server = Process(cmd, tmp_path / "beanstalkd.log", "beanstalkd (again)")
        server.wait_for_port(port, 10)
        second = submit(address, sh("true"))
        wait_until(lambda: results(worker.log_dir, second), 30, "the reconnected worker")
        assert worker.proc.poll() is None
    finally:
        server.kill()


def test_submit_wait_prints_the_final_result_and_exits_by_it(
    beanstalkd: Any, start_worker: Any
) -> None:
    start_worker()
    address = f"{beanstalkd[0]}:{beanstalkd[1]}"
    ok = beanraft("submit", "--beanstalkd", address, "--wait", "30", "--", "echo", "hello")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert json.loads(lines[-1])["action"] == "delete"
    assert lines[-2] == "hello"  # the job's output, then its record
    failed = beanraft(
        "submit", "--beanstalkd", address, "--wait", "30", "--",
        "sh", "-c", "printf 'no such file\\033[2J\\n' >&2; exit 9",
    )  # fmt: skip
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    record = json.loads(lines[-1])
    assert (record["exit_code"], record["action"]) == (9, "bury")
    assert "output_tail" not in record
    assert lines[-2] == "no such file\\x1b[2J"  # stderr too, its escape shown, not obeyed


def test_submit_wait_shows_only_the_end_of_a_long_output(
    beanstalkd: Any, start_worker: Any
) -> None:
    start_worker()
    address = f"{beanstalkd[0]}:{beanstalkd[1]}"
    done = beanraft(
        "submit", "--beanstalkd", address, "--wait", "30", "--", "sh", "-c", "seq 1 20000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2] == "20000" and "1\n2\n3\n" not in done.stdout
    assert lines[1].startswith("[... earlier output left out")


def test_worker_shows_its_isolation_configuration_at_start(
    beanstalkd: Any, start_worker: Any, wait_until: Any
) -> None:
    worker = start_worker(
        "--concurrency",
        "2",
        "--allow-root",
        "--max-memory-mb",
        "2048",
        "--uid-range",
        "1900100000-1900100009",
    )
    line = wait_until(
        lambda: next((ln for ln in worker.log().splitlines() if "worker started" in ln), None),
        30,
        "the worker's start line",
    )
    for expected in (
        "allow_root=True",
        "seccomp=True",
        "max_memory_mb=2048",
        "default_memory_mb=1024",
        "default_open_files=1024",
        "default_log_mb=64",
        "job_uids=1900100000,1900100001",
    ):
        assert expected in line, line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--uid-range", "10-5"], "FIRST-LAST"),
        (["--default-memory-mb", "4096", "--max-memory-mb", "1024"], "--max-memory-mb"),
        (["--uid-range", "1900200000-1900200000", "--concurrency", "2"], "every uid in"),
    ],
)
def test_worker_refuses_a_configuration_it_cannot_honour(
    beanstalkd: Any, cgroup_root: str, tmp_path: Any, flags: list[str], message: str
) -> None:
    address = f"{beanstalkd[0]}:{beanstalkd[1]}"
    common = ["worker", "--beanstalkd", address, "--log-dir", str(tmp_path)]
    done = beanraft(*common, "--cgroup-root", cgroup_root, *flags)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_worker_exports_prometheus_metrics_of_its_attempts(
    beanstalkd: Any, start_worker: Any, wait_until: Any, free_port_and_wait: Any
) -> None:
    import urllib.request

    free_port, _ = free_port_and_wait
    port = free_port()
    worker = start_worker("--metrics-addr", f"127.0.0.1:{port}")
    worker.proc.wait_for_port(port, 30)
    submit(beanstalkd, sh("exit 0"))
    submit(beanstalkd, sh("exit 3"))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    wait_until(
        lambda: 'beanraft_worker_attempts_finished_total{status="exited"} 2.0' in scrape(),
        30,
        "two finished attempts in the metrics",
    )
    text = scrape()
    assert "beanraft_worker_attempts_started_total 2.0" in text
    assert "beanraft_worker_attempts_running 0.0" in text
    assert "beanraft_worker_attempt_duration_seconds_count 2.0" in text
