"""``beanraft node`` and ``beanraft cluster``: refusals that say what to do, and status output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _beanraft(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "beanraft", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _node_args(tmp_path: Path) -> list[str]:
    node = ["node", "--node-id", "1", "--data-dir", str(tmp_path / "d")]
    return [*node, "--raft-addr", "127.0.0.1:1", "--grpc-addr", "127.0.0.1:2"]


def test_a_node_without_a_cluster_secret_refuses_to_start_and_says_how_to_make_one(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    result = _beanraft(*_node_args(tmp_path), "--tls-dir", str(tls))
    assert result.returncode != 0
    assert "--cluster-secret-file" in result.stderr
    assert "/dev/urandom" in result.stderr


def test_a_node_without_tls_or_insecure_refuses_to_start(tmp_path: Path) -> None:
    result = _beanraft(*_node_args(tmp_path))
    assert result.returncode != 0
    assert "--tls-dir" in result.stderr and "--insecure" in result.stderr


def test_restore_refuses_a_file_that_is_not_a_snapshot(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.snap"
    bogus.write_bytes(b"not a snapshot")
    result = _beanraft("cluster", "restore", str(bogus), "--data-dir", str(tmp_path / "n1"))
    assert result.returncode != 0
    assert "not a beanraft snapshot" in result.stderr
    assert not (tmp_path / "n1" / "seed.snapshot").exists()


@pytest.mark.slow
def test_cluster_status_json_names_the_leader_and_every_member(tmp_path: Path) -> None:
    import asyncio

    from process_harness import ProcessCluster

    cluster = ProcessCluster(tmp_path, fsync="never")
    cluster.start_all()
    try:
        asyncio.run(cluster.wait_for_leader())
        addrs = ",".join(n.grpc_addr for n in cluster.nodes)
        result = _beanraft("cluster", "status", "--cluster", addrs, "--insecure", "--json")
        assert result.returncode == 0, result.stderr
        views = json.loads(result.stdout)
        leaders = [v for v in views.values() if v["is_leader"]]
        assert len(leaders) == 1
        assert len(leaders[0]["members"]) == 3
        assert all(isinstance(m["lag"], int) and m["lag"] >= 0 for m in leaders[0]["members"])
        assert all(isinstance(v["commit_index"], int) for v in views.values())  # numbers, not str
        followers = [v for v in views.values() if not v["is_leader"]]
        # A follower cannot know another follower's lag: null, not -1.
        assert all(m["lag"] is None for f in followers for m in f["members"] if not m["is_leader"])
        asyncio.run(cluster.assert_converged())
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("taken", ["raft", "grpc"])
def test_a_node_refuses_to_start_on_an_address_another_process_listens_on(
    tmp_path: Path, taken: str
) -> None:
    import socket
    import subprocess
    import sys

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = f"127.0.0.1:{holder.getsockname()[1]}"
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{spare.getsockname()[1]}"
    raft, grpc_addr = (busy, free) if taken == "raft" else (free, busy)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "beanraft", "node", "--node-id", "1", "--data-dir",
             str(tmp_path / "n1"), "--raft-addr", raft, "--grpc-addr", grpc_addr, "--insecure"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        holder.close()
    assert done.returncode == 1
    assert f"cannot listen on {busy} for {'Raft' if taken == 'raft' else 'gRPC'}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--cluster", "127.0.0.1:1", "--tls-dir", "/nonexistent"], "ca.crt is missing"),
        (["restore", "/nonexistent", "--data-dir", "/tmp/x"], "cannot read /nonexistent"),
        (["snapshot", "--out", "/tmp", "--cluster", "127.0.0.1:1", "--insecure"], "a directory"),
    ],
)
def test_cluster_commands_answer_bad_input_with_one_line(args: list[str], message: str) -> None:
    result = _beanraft("cluster", *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
