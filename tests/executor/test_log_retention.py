"""Retention of job output on a worker host (`executor.jobfiles.sweep`): finished jobs' files go
after the retention period, then oldest first while the log dir is above its byte bound, whole
jobs at a time; running jobs and files that are not a job's are never touched. Plain tmp dirs,
mtimes set with os.utime, a fixed clock: no root, no worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from executor.jobfiles import SweepResult, sweep

REPO = Path(__file__).resolve().parents[2]
NOW_S = 1_750_000_000.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
FINISHED_SUFFIXES = ("stdout.log", "stderr.log", "output.log", "worker.log", "results.jsonl")


def make_job(
    log_dir: Path,
    job_id: int,
    age_s: float,
    size_bytes: int = 10,
    suffixes: tuple[str, ...] = FINISHED_SUFFIXES,
) -> list[Path]:
    """A job's files, each size_bytes long, last written age_s before NOW_S."""
    paths = []
    for suffix in suffixes:
        path = log_dir / f"job-{job_id}.{suffix}"
        path.write_bytes(b"x" * size_bytes)
        os.utime(path, (NOW_S - age_s, NOW_S - age_s))
        paths.append(path)
    return paths


def job_ids(log_dir: Path) -> set[int]:
    return {int(p.name.split(".")[0].removeprefix("job-")) for p in log_dir.glob("job-*")}


def total_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.iterdir() if p.is_file())


def test_jobs_older_than_the_period_go_and_recent_ones_stay(tmp_path: Path) -> None:
    make_job(tmp_path, 1, WEEK_S + DAY_S)
    make_job(tmp_path, 2, WEEK_S + 60)
    make_job(tmp_path, 3, WEEK_S - 60)
    make_job(tmp_path, 4, 0)

    result = sweep(str(tmp_path), WEEK_S, 1 << 30, NOW_S)

    assert job_ids(tmp_path) == {3, 4}
    assert result == SweepResult(jobs_removed=2, bytes_removed=2 * 5 * 10, bytes_kept=2 * 5 * 10)


def test_a_job_s_age_is_its_newest_file(tmp_path: Path) -> None:
    """A job retried after a week keeps its first attempt's output with the second's."""
    old_stdout, *_ = make_job(tmp_path, 1, WEEK_S * 3)
    os.utime(tmp_path / "job-1.results.jsonl", (NOW_S - 60, NOW_S - 60))

    result = sweep(str(tmp_path), WEEK_S, 1 << 30, NOW_S)

    assert result.jobs_removed == 0
    assert old_stdout.exists()


def test_a_running_job_is_kept_however_old_and_however_large(tmp_path: Path) -> None:
    running = make_job(tmp_path, 1, WEEK_S * 10, 1000, (*FINISHED_SUFFIXES, "state.json", "stop"))
    make_job(tmp_path, 2, WEEK_S * 10)

    result = sweep(str(tmp_path), WEEK_S, 100, NOW_S)

    assert all(path.exists() for path in running)
    assert job_ids(tmp_path) == {1}
    # Its bytes still count: the host total stays above the bound while it runs.
    assert result == SweepResult(jobs_removed=1, bytes_removed=50, bytes_kept=7 * 1000)


def test_a_job_whose_state_file_is_being_written_counts_as_running(tmp_path: Path) -> None:
    make_job(tmp_path, 1, WEEK_S * 2, suffixes=(*FINISHED_SUFFIXES, "state.json.123.tmp"))

    assert sweep(str(tmp_path), WEEK_S, 1, NOW_S).jobs_removed == 0
    assert job_ids(tmp_path) == {1}


def test_the_byte_bound_removes_whole_jobs_oldest_first(tmp_path: Path) -> None:
    for job_id, age_s in ((1, 5 * DAY_S), (2, 1 * DAY_S), (3, 3 * DAY_S), (4, 2 * DAY_S)):
        make_job(tmp_path, job_id, age_s, 100)  # 500 bytes a job
    max_bytes = 1200  # room for two jobs, not three

    result = sweep(str(tmp_path), WEEK_S, max_bytes, NOW_S)

    assert job_ids(tmp_path) == {2, 4}  # the two newest
    assert total_bytes(tmp_path) == 1000 <= max_bytes
    assert result == SweepResult(jobs_removed=2, bytes_removed=1000, bytes_kept=1000)


def test_a_total_exactly_at_the_bound_fits(tmp_path: Path) -> None:
    make_job(tmp_path, 1, DAY_S, 100)
    make_job(tmp_path, 2, 0, 100)

    assert sweep(str(tmp_path), WEEK_S, 1000, NOW_S) == SweepResult(0, 0, 1000)
    assert job_ids(tmp_path) == {1, 2}


def test_age_and_byte_bounds_together(tmp_path: Path) -> None:
    make_job(tmp_path, 1, WEEK_S * 2, 1)  # expired, however small
    make_job(tmp_path, 2, 3 * DAY_S, 100)  # the oldest left: goes for the byte bound
    make_job(tmp_path, 3, DAY_S, 100)

    result = sweep(str(tmp_path), WEEK_S, 600, NOW_S)

    assert job_ids(tmp_path) == {3}
    assert result == SweepResult(jobs_removed=2, bytes_removed=5 + 500, bytes_kept=500)


def test_files_that_are_not_a_job_s_are_never_touched(tmp_path: Path) -> None:
    ancient_s = NOW_S - WEEK_S * 52
    others = [
        tmp_path / name
        for name in ("worker.log", "job-.stdout.log", "job-12", "jobs-3.stdout.log", "job-x.log")
    ]
    for path in others:
        path.write_bytes(b"y" * 1000)
        os.utime(path, (ancient_s, ancient_s))
    subdir = tmp_path / "job-5.stdout.log"  # a directory with a job's name is not a job's file
    subdir.mkdir()
    os.utime(subdir, (ancient_s, ancient_s))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"z")
    link = tmp_path / "job-6.stdout.log"
    link.symlink_to(target)
    make_job(tmp_path, 7, WEEK_S * 52)

    result = sweep(str(tmp_path), WEEK_S, 1, NOW_S)

    assert result == SweepResult(jobs_removed=1, bytes_removed=50, bytes_kept=0)
    assert all(path.exists() for path in (*others, subdir, target, link))
    assert not list(tmp_path.glob("job-7.*"))


def test_ids_spelled_differently_are_different_jobs(tmp_path: Path) -> None:
    make_job(tmp_path, 7, WEEK_S * 2)
    recent = tmp_path / "job-007.stdout.log"
    recent.write_bytes(b"x")

    sweep(str(tmp_path), WEEK_S, 1 << 30, NOW_S)

    assert recent.exists()
    assert not (tmp_path / "job-7.stdout.log").exists()


@pytest.mark.parametrize("make_dir", [True, False], ids=["empty", "missing"])
def test_an_empty_or_missing_dir_sweeps_nothing(tmp_path: Path, make_dir: bool) -> None:
    log_dir = tmp_path / "logs"
    if make_dir:
        log_dir.mkdir()

    assert sweep(str(log_dir), WEEK_S, 1, NOW_S) == SweepResult(0, 0, 0)
    assert log_dir.exists() == make_dir


def test_a_file_that_vanished_meanwhile_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_job(tmp_path, 1, WEEK_S * 2)
    real_unlink = os.unlink

    def unlink_after_someone_else(path: str) -> None:
        real_unlink(path)
        if path.endswith(".stdout.log"):
            return
        raise FileNotFoundError(path)

    monkeypatch.setattr(os, "unlink", unlink_after_someone_else)

    result = sweep(str(tmp_path), WEEK_S, 1 << 30, NOW_S)

    assert result == SweepResult(jobs_removed=1, bytes_removed=10, bytes_kept=0)
    assert job_ids(tmp_path) == set()


@pytest.mark.root  # the worker refuses to start unless root, before it reads these flags
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--log-retention-days", "0"),
        ("--log-retention-days", "-1"),
        ("--log-retention-gb", "0"),
        ("--log-retention-gb", "nan"),
    ],
)
def test_worker_refuses_a_retention_bound_that_is_not_above_zero(
    tmp_path: Path, flag: str, value: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "beanraft",
            "worker",
            "--beanstalkd",
            "127.0.0.1:1",
            "--log-dir",
            str(tmp_path / "logs"),
            flag,
            value,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"beanraft worker: {flag} {float(value)} must be a number above 0\n"
    assert not (tmp_path / "logs").exists()


def test_a_state_file_left_by_a_dead_worker_is_cleared_and_a_live_one_kept(tmp_path: Path) -> None:
    from executor.jobfiles import JobFiles, clear_stale_states

    dead = subprocess.Popen(["true"])
    dead.wait()
    JobFiles(str(tmp_path), 1).write_state({"worker_pid": dead.pid})
    JobFiles(str(tmp_path), 2).write_state({"worker_pid": os.getpid()})
    (tmp_path / "job-3.state.json").write_text("not json")
    assert clear_stale_states(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-2.state.json"]
