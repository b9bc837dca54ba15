"""cgroup file writes (v1 and v2) and outcome classification: pure or against a temp dir."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from executor.cgroup_backends import CgroupV2
from executor.cgroups import CgroupError, v1_writes, v2_writes
from executor.plan import CgroupLimits
from executor.runner import classify

DEVICES = ("8:0", "259:0")
FULL = CgroupLimits(
    cpu_quota_us=20_000,
    cpu_period_us=100_000,
    memory_bytes=64 << 20,
    io_bps=1 << 20,
    pids_max=32,
    cpuset_cpus="0",
)
NONE = CgroupLimits(None, 100_000, None, None, 16, None)


def test_v1_writes_every_limit_and_io_for_every_device() -> None:
    writes = v1_writes(FULL, DEVICES, parent_cpus="0-1", parent_mems="0")
    assert ("cpu", "cpu.cfs_quota_us", "20000") in writes
    assert ("memory", "memory.limit_in_bytes", str(64 << 20)) in writes
    assert ("memory", "memory.memsw.limit_in_bytes", str(64 << 20)) in writes
    assert ("pids", "pids.max", "32") in writes
    assert ("cpuset", "cpuset.cpus", "0") in writes
    for dev in DEVICES:
        assert ("blkio", "blkio.throttle.read_bps_device", f"{dev} {1 << 20}") in writes
        assert ("blkio", "blkio.throttle.write_bps_device", f"{dev} {1 << 20}") in writes


def test_v1_always_writes_pids_and_cpuset_even_without_limits() -> None:
    writes = v1_writes(NONE, DEVICES, parent_cpus="0-1", parent_mems="0")
    assert writes == [
        ("cpuset", "cpuset.mems", "0"),
        ("cpuset", "cpuset.cpus", "0-1"),
        ("pids", "pids.max", "16"),
    ]


def test_v2_writes_every_limit_with_swap_off_and_io_max_per_device() -> None:
    writes = v2_writes(FULL, DEVICES, parent_mems="0")
    assert ("cpu.max", "20000 100000") in writes
    assert ("memory.max", str(64 << 20)) in writes
    assert ("memory.swap.max", "0") in writes
    assert ("pids.max", "32") in writes
    assert ("cpuset.cpus", "0") in writes
    assert ("io.max", f"8:0 rbps={1 << 20} wbps={1 << 20}") in writes
    assert ("io.max", f"259:0 rbps={1 << 20} wbps={1 << 20}") in writes


def _fake_v2_tree(tmp_path: Path, controllers: str) -> Path:
    (tmp_path / "cgroup.controllers").write_text(controllers + "\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    worker = tmp_path / "beanraft" / "worker-1-1"
    worker.mkdir(parents=True)
    for d in (tmp_path / "beanraft", worker):
        (d / "cgroup.subtree_control").write_text("")
    (worker / "cpuset.mems.effective").write_text("0\n")
    return worker


def test_v2_backend_writes_limit_files_in_a_temp_hierarchy(tmp_path: Path) -> None:
    worker = _fake_v2_tree(tmp_path, "cpu memory pids io cpuset")
    backend = CgroupV2(str(tmp_path), "beanraft", "worker-1-1")
    # A real kernel fills subtree_control from our "+cpu ..." write; a temp dir keeps the text.
    assert (worker / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +io +cpuset"
    (worker / "cgroup.subtree_control").write_text("cpu memory pids io cpuset")
    job = worker / "job-5-1"
    job.mkdir()
    for name in ("pids.max", "cpu.max", "memory.max", "memory.swap.max", "io.max", "cpuset.cpus"):
        (job / name).write_text("")
    (job / "cpuset.mems").write_text("")
    limits = CgroupLimits(50_000, 100_000, 1 << 20, None, 64, "0")
    cgroup = backend.create("job-5-1", limits)
    assert cgroup.dirs == {"": str(job)}
    assert (job / "cpu.max").read_text() == "50000 100000"
    assert (job / "memory.max").read_text() == str(1 << 20)
    assert (job / "memory.swap.max").read_text() == "0"
    assert (job / "pids.max").read_text() == "64"
    assert (job / "cpuset.cpus").read_text() == "0"


def test_v2_backend_fails_closed_when_a_needed_controller_is_missing(tmp_path: Path) -> None:
    worker = _fake_v2_tree(tmp_path, "cpu pids")
    backend = CgroupV2(str(tmp_path), "beanraft", "worker-1-1")
    (worker / "cgroup.subtree_control").write_text("cpu pids")
    with pytest.raises(CgroupError, match="memory"):
        backend.create("job-5-1", NONE)
    assert not (worker / "job-5-1").exists()


def _status_exited(code: int) -> int:
    return code << 8


def test_classify_reports_exit_codes_and_signals_separately() -> None:
    exited = classify([f"status {_status_exited(3)}"], 0, False, False, False)
    assert (exited.status, exited.exit_code, exited.signal) == ("exited", 3, None)
    signaled = classify([f"status {signal.SIGSEGV}"], 0, False, False, False)
    assert (signaled.status, signaled.exit_code, signaled.signal) == ("signaled", None, 11)


def test_classify_tells_oom_timeout_and_stop_apart_from_a_plain_sigkill() -> None:
    kill = f"status {signal.SIGKILL}"
    assert classify([kill], 0, True, False, False).status == "oom"
    assert classify([kill], 0, False, True, False).status == "timeout"
    assert classify([kill], 0, False, False, True).status == "stopped"
    assert classify([kill], 0, False, False, False).status == "signaled"


def test_an_oom_kill_that_took_the_jobs_init_is_reported_as_sigkill() -> None:
    result = classify(["init 5"], 0, True, False, False)  # no status: the init itself died
    assert (result.status, result.signal, result.oom_killed) == ("oom", signal.SIGKILL, True)


def test_classify_reports_setup_errors_as_failed_to_start() -> None:
    result = classify(["init 5", "error cannot start 'nope': No such file"], 0, False, False, False)
    assert result.status == "failed_to_start"
    assert "nope" in (result.error or "")
    assert os.WIFEXITED(0)
