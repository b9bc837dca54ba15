"""The job spec and the pure plan: run anywhere, no root, no I/O."""

from __future__ import annotations

import json

import pytest

from cluster.jobspec import DEFAULT_PIDS_MAX, SpecError, parse_spec, spec_from_dict
from executor.plan import (
    NOBODY_UID,
    HostLayout,
    PlanError,
    WorkerPolicy,
    cgroup_limits,
    is_job_cgroup_name,
    make_plan,
)

LAYOUT = HostLayout({"/usr": None, "/bin": "usr/bin", "/lib": "usr/lib", "/etc/ssl": None})


def plan_for(raw: dict[str, object], policy: WorkerPolicy | None = None):
    return make_plan(spec_from_dict(raw), 7, 2, LAYOUT, policy or WorkerPolicy())


def test_minimal_spec_gets_safe_defaults() -> None:
    spec = parse_spec(b'{"command": "true"}')
    assert spec.network == "none"
    assert spec.limits.pids == DEFAULT_PIDS_MAX
    assert spec.run_as_root is False
    assert spec.workdir == "/work"


def test_full_spec_round_trips_through_json() -> None:
    raw = {
        "command": "/usr/bin/python3",
        "args": ["-c", "print(1)"],
        "env": {"A": "1"},
        "workdir": "/data",
        "limits": {"cpu_percent": 50, "memory_mb": 64, "io_bps": 1 << 20, "pids": 32},
        "timeout_s": 5,
        "network": "host",
        "retry": {"max_retries": 2, "backoff_s": 3},
        "result_tube": "results",
    }
    spec = spec_from_dict(raw)
    assert parse_spec(json.dumps(spec.to_json())) == spec


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b"{}", "command"),
        (b'{"command": "x", "colour": 1}', "unknown field"),
        (b'{"command": "x", "limits": {"memory_mb": "big"}}', "limits.memory_mb"),
        (b'{"command": "x", "limits": {"memory_mb": true}}', "limits.memory_mb"),
        (b'{"command": "x", "limits": {"cpu_percent": 0}}', "out of range"),
        (b'{"command": "x", "limits": {"cpu_cores": "a-b"}}', "cpu_cores"),
        (b'{"command": "x", "network": "bridge"}', "network"),
        (b'{"command": "x", "workdir": "relative"}', "workdir"),
        (b'{"command": "x", "workdir": "/usr/x"}', "shadow"),
        (b'{"command": "x", "env": {"1BAD": "v"}}', "env"),
        (b'{"command": "x", "retry": {"max_retries": -1}}', "retry.max_retries"),
        (b'{"command": "x", "result_tube": "has space"}', "result_tube"),
        (b'{"command": "x", "args": ["a", 1]}', "args"),
    ],
)
def test_invalid_spec_is_rejected_with_a_message_naming_the_field(
    body: bytes, fragment: str
) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_spec(body)


def test_plan_runs_as_nobody_with_all_namespaces_for_network_none() -> None:
    plan = plan_for({"command": "true"})
    assert plan.uid == NOBODY_UID
    assert set(plan.namespaces) == {"pid", "mount", "ipc", "uts", "cgroup", "net"}
    assert plan.job_name == "job-7-2" == plan.hostname
    assert is_job_cgroup_name(plan.job_name)


def test_plan_with_host_network_keeps_host_netns_and_resolv_conf_if_present() -> None:
    plan = plan_for({"command": "true", "network": "host"})
    assert "net" not in plan.namespaces


def test_root_needs_both_the_spec_and_the_worker_policy() -> None:
    with pytest.raises(PlanError, match="allow-root"):
        plan_for({"command": "true", "run_as_root": True})
    plan = plan_for({"command": "true", "run_as_root": True}, WorkerPolicy(allow_root=True))
    assert plan.uid == 0


def test_environment_is_built_from_the_spec_alone() -> None:
    plan = plan_for({"command": "true", "env": {"FOO": "bar", "PATH": "/custom"}})
    env = dict(plan.env)
    assert env["FOO"] == "bar"
    assert env["PATH"] == "/custom"
    assert set(env) == {"FOO", "PATH", "HOME", "LANG", "TMPDIR", "BEANRAFT_JOB_ID"}


def test_mounts_bind_dirs_read_only_and_recreate_symlinks() -> None:
    mounts = {m.target: m for m in plan_for({"command": "true", "workdir": "/data"}).mounts}
    assert mounts["/usr"].kind == "bind_ro"
    assert (mounts["/bin"].kind, mounts["/bin"].source) == ("symlink", "usr/bin")
    assert mounts["/etc/ssl"].kind == "bind_ro"
    assert "/sbin" not in mounts  # absent on this host layout
    assert mounts["/tmp"].kind == "tmpfs"
    assert mounts["/data"].kind == "tmpfs" and "uid=65534" in mounts["/data"].options
    assert mounts["/proc"].kind == "proc"
    assert mounts["/dev/null"].kind == "dev_bind"
    order = [m.target for m in plan_for({"command": "true"}).mounts]
    assert order.index("/dev") < order.index("/dev/null")
    assert order.index("/etc") < order.index("/etc/passwd")


def test_cgroup_limits_convert_units() -> None:
    spec = spec_from_dict(
        {"command": "x", "limits": {"cpu_percent": 20, "memory_mb": 64, "cpu_cores": "0"}}
    )
    limits = cgroup_limits(spec)
    assert (limits.cpu_quota_us, limits.cpu_period_us) == (20_000, 100_000)
    assert limits.memory_bytes == 64 * 1024 * 1024
    assert limits.pids_max == DEFAULT_PIDS_MAX
    assert limits.cpuset_cpus == "0"
    assert limits.io_bps is None
