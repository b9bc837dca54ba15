"""The hardening's pure and small parts, anywhere, no root: the spec parser against hostile
bodies, the plan's defaults and bounds, the output cap, uid leases and terminal escaping."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cluster.jobspec import MAX_BODY_BYTES, SpecError, parse_spec, spec_from_dict
from executor import uids
from executor.cli_logs import EscapingSink, escape_controls
from executor.output import OutputPipe
from executor.plan import (
    PROC_MASKED,
    PROC_READ_ONLY,
    HostLayout,
    PlanError,
    WorkerPolicy,
    make_plan,
)

LAYOUT = HostLayout({"/usr": None})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"command": "true", "timeout_s": ' + b"9" * 5000 + b"}", "cannot be read"),
        (b'{"command": "true", "env": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"command": "true", "args": ' + b"[" * 500 + b"]" * 500 + b"}", "args"),
        (b'{"command": "true", "timeout_s": 1e999}', "timeout_s"),
        (b'{"command": "true", "timeout_s": NaN}', "timeout_s"),
        (b'{"command": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}', "at most"),
        (b'{"command": "true", "limits": {"pids": 99999999999999999999}}', "limits.pids"),
        (b'{"command": "true", "network": {"a": [1, 2]}}', "network"),
        (b'{"command": "true", "env": {"A": 1}}', "env.A"),
        (b'{"command": "true", "limits": {"log_mb": 0}}', "limits.log_mb"),
        (b'{"command": "true", "limits": {"open_files": 3}}', "limits.open_files"),
    ],
)
def test_hostile_bodies_raise_spec_error_and_nothing_else(body: bytes, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_spec(body)


def test_a_huge_bad_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(json.dumps({"command": "true", "timeout_s": "x" * 100_000}))
    assert len(str(caught.value)) < 200


def plan_for(raw: dict[str, object], policy: WorkerPolicy | None = None, uid: int = 1_900_000_007):
    return make_plan(spec_from_dict(raw), 7, 1, LAYOUT, policy or WorkerPolicy(), uid)


def test_every_job_gets_the_worker_defaults_for_memory_files_and_logs() -> None:
    policy = WorkerPolicy()
    plan = plan_for({"command": "true"})
    assert plan.limits.memory_bytes == policy.default_memory_mb << 20
    assert dict(plan.rlimits) == {
        "NOFILE": policy.default_open_files,
        "FSIZE": policy.default_file_size_mb << 20,
        "CORE": 0,
    }
    assert plan.log_bytes == policy.default_log_mb << 20
    assert plan.seccomp


def test_a_spec_may_lower_or_raise_limits_within_the_worker_maximum() -> None:
    policy = WorkerPolicy(max_memory_mb=512, max_log_mb=8, max_open_files=4096)
    plan = plan_for(
        {"command": "true", "limits": {"memory_mb": 512, "log_mb": 2, "open_files": 4096}}, policy
    )
    assert plan.limits.memory_bytes == 512 << 20
    assert plan.log_bytes == 2 << 20
    assert dict(plan.rlimits)["NOFILE"] == 4096


@pytest.mark.parametrize(
    ("limits", "flag"),
    [
        ({"memory_mb": 513}, "--max-memory-mb"),
        ({"log_mb": 9}, "--max-log-mb"),
        ({"open_files": 4097}, "--max-open-files"),
        ({"file_size_mb": 65537}, "--max-file-size-mb"),
    ],
)
def test_a_limit_above_the_worker_maximum_is_refused_naming_the_flag(
    limits: dict[str, int], flag: str
) -> None:
    policy = WorkerPolicy(max_memory_mb=512, max_log_mb=8, max_open_files=4096)
    with pytest.raises(PlanError, match=flag):
        plan_for({"command": "true", "limits": limits}, policy)


def test_proc_is_masked_and_read_only_right_after_it_is_mounted() -> None:
    kinds = [(m.kind, m.target) for m in plan_for({"command": "true"}).mounts]
    proc_at = kinds.index(("proc", "/proc"))
    after = kinds[proc_at + 1 : proc_at + 1 + len(PROC_MASKED) + len(PROC_READ_ONLY)]
    assert after == [("mask", p) for p in PROC_MASKED] + [("read_only", p) for p in PROC_READ_ONLY]
    assert "/proc/sys" in PROC_READ_ONLY and "/proc/kcore" in PROC_MASKED
    assert not any(target.startswith("/sys") for _, target in kinds)


def test_the_job_runs_as_the_slot_uid_and_root_only_in_a_user_namespace() -> None:
    plan = plan_for({"command": "true"}, uid=1_900_000_042)
    assert (plan.uid, plan.gid, plan.host_uid) == (1_900_000_042,) * 3
    assert "user" not in plan.namespaces
    passwd = next(m.source for m in plan.mounts if m.target == "/etc/passwd")
    assert "job:x:1900000042:1900000042:" in passwd
    root = plan_for(
        {"command": "true", "run_as_root": True}, WorkerPolicy(allow_root=True), 1_900_000_042
    )
    assert (root.uid, root.gid, root.host_uid) == (0, 0, 1_900_000_042)
    assert "user" in root.namespaces


def test_output_pipe_keeps_the_cap_and_counts_what_it_drops(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_bytes(b"earlier\n")
    pipe = OutputPipe(str(log), cap_bytes=10)
    os.write(pipe.write_fd, b"0123456789abcdef")
    pipe.close_write_end()
    assert pipe.pump() is False  # EOF once the writer is gone
    pipe.close()
    assert log.read_bytes() == b"earlier\n0123456789"
    assert (pipe.kept_bytes, pipe.dropped_bytes) == (10, 6)


def test_output_pipe_pump_returns_true_while_the_writer_is_open(tmp_path: Path) -> None:
    pipe = OutputPipe(str(tmp_path / "o"), cap_bytes=100)
    os.write(pipe.write_fd, b"abc")
    assert pipe.pump() is True
    pipe.close()
    assert (tmp_path / "o").read_bytes() == b"abc"


def test_uid_leases_are_exclusive_until_released(tmp_path: Path) -> None:
    first = uids.lease(5000, 5001, str(tmp_path))
    second = uids.lease(5000, 5001, str(tmp_path))
    assert {first.uid, second.uid} == {5000, 5001}
    with pytest.raises(uids.UidRangeExhausted, match="--uid-range"):
        uids.lease(5000, 5001, str(tmp_path))
    first.release()
    again = uids.lease(5000, 5001, str(tmp_path))
    assert again.uid == first.uid
    again.release()
    second.release()


@pytest.mark.parametrize("text", ["", "5", "a-b", "10-5", "0-100", "1000-4294967295"])
def test_bad_uid_ranges_are_refused_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"range|FIRST-LAST"):
        uids.parse_range(text)


def test_escape_controls_shows_c0_c1_and_del_but_keeps_newline_and_tab() -> None:
    assert escape_controls("a\tb\nc\x1b[2J\x07\x7f\x9b") == "a\tb\nc\\x1b[2J\\x07\\x7f\\x9b"
    assert escape_controls("héllo — ✓") == "héllo — ✓"


def test_escaping_sink_keeps_a_character_split_between_reads_whole() -> None:
    out = io.BytesIO()
    sink = EscapingSink(out)  # type: ignore[arg-type]
    data = "é\x1b".encode()
    sink.write(data[:1])
    sink.write(data[1:] + b"\xff")
    assert out.getvalue() == "é\\x1b\\xff".encode()


def test_output_pipe_copies_at_most_its_rate_and_resumes_as_time_passes(tmp_path: Path) -> None:
    pipe = OutputPipe(str(tmp_path / "o"), cap_bytes=1 << 20, rate_bps=4096)
    os.write(pipe.write_fd, b"x" * 10_000)
    assert pipe.pump() is True
    assert pipe.kept_bytes == 4096 and pipe.throttled  # one second's worth, then it waits
    pipe._refilled_ns -= 1_000_000_000  # a second later
    pipe.pump()
    assert pipe.kept_bytes == 8192
    assert pipe.pump(throttle=False) is True  # the drain after exit is not throttled
    assert pipe.kept_bytes == 10_000
    pipe.close()
