"""The README's first command for real: ``python -m beanraft up`` runs 3 nodes, each serving
the beanstalkd protocol; a beanstalkd client (greenstalk) puts and reserves on any of them;
SIGTERM stops everything; the next run has the jobs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import greenstalk
import pytest
from harness.ports import allocate as free_ports

from .listening import listening_addresses
from .test_up_orchestration import UpProcess, _alive

pytestmark = pytest.mark.slow


class RealUp(UpProcess):
    def __init__(self, *flags: str) -> None:
        self.lines = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "beanraft", "up", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._start_reader()


def _up(data_dir: Path, listen: str) -> RealUp:
    up = RealUp("--nodes", "3", "--workers", "0", "--data-dir", str(data_dir), "--listen", listen)
    up.wait_for("beanraft is up", timeout_s=180)
    return up


def _stop(up: RealUp) -> None:
    up.process.send_signal(signal.SIGTERM)
    assert up.finish(timeout_s=90) == 0, up.output()
    assert not [name for name, pid in up.child_pids().items() if _alive(pid)], up.output()


def _assert_loopback_only(up: RealUp) -> None:
    """pysyncobj binds every interface by default: nothing of ours may."""
    for name, pid in up.child_pids().items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} listens nowhere"
        assert {host for host, _ in addresses} == {"127.0.0.1"}, (name, addresses)


def _assert_metrics_served(data_dir: Path) -> None:
    for node in json.loads((data_dir / "up.json").read_text())["nodes"]:
        url = f"http://{node['metrics_addr']}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert b"# TYPE" in response.read()


def test_up_serves_greenstalk_stops_cleanly_and_keeps_jobs_across_runs(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    up = _up(tmp_path, f"127.0.0.1:{port}")
    try:
        assert sorted(up.child_pids()) == ["node-1", "node-2", "node-3"]  # no proxy
        _assert_loopback_only(up)
        _assert_metrics_served(tmp_path)
        node_3 = json.loads((tmp_path / "up.json").read_text())["nodes"][2]["beanstalkd_addr"]
        host_3, port_3 = node_3.rsplit(":", 1)
        with greenstalk.Client((host_3, int(port_3))) as other:
            held_id = other.put("reserved when stopped", ttr=120)  # a put on node 3 ...
        with greenstalk.Client(("127.0.0.1", port)) as client:
            ready_id = client.put(b"\x00binary\r\nbody", ttr=120)
            job = client.reserve(timeout=30)  # ... is reserved on node 1
            assert (job.id, job.body) == (held_id, "reserved when stopped")
        _stop(up)
    finally:
        up.kill()
    assert stat.S_IMODE((tmp_path / "cluster.secret").stat().st_mode) == 0o600
    assert (tmp_path / "tls" / "node-3.crt").exists()
    addresses = json.loads((tmp_path / "up.json").read_text())

    again = _up(tmp_path, f"127.0.0.1:{port}")
    try:
        assert "resuming a 3-node cluster" in again.output()
        assert json.loads((tmp_path / "up.json").read_text()) == addresses
        with greenstalk.Client(("127.0.0.1", port), encoding=None) as client:
            assert client.peek(ready_id).body == b"\x00binary\r\nbody"
            # The client's session ended with its connection and released its job.
            reserved = {client.reserve(timeout=30).id for _ in range(2)}
            assert reserved == {held_id, ready_id}
            assert client.stats()["total-jobs"] == 2
        _stop(again)
    finally:
        again.kill()


def test_up_insecure_warns_loudly_and_still_serves(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    up = RealUp(
        "--nodes", "1", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}", "--insecure"
    )
    try:
        up.wait_for("beanraft is up", timeout_s=180)
        assert "WARNING: --insecure: gRPC without TLS or roles" in up.output()
        assert not (tmp_path / "tls").exists()
        with greenstalk.Client(("127.0.0.1", port)) as client:
            job_id = client.put("insecure but working")
            assert client.reserve(timeout=30).id == job_id
        _stop(up)
    finally:
        up.kill()


def test_every_command_the_banner_suggests_works_as_printed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root for the worker pool, and CI=true")
        pytest.skip("needs root for the worker pool")
    port = free_ports(1)[0]
    up = RealUp(
        "--nodes", "3", "--workers", "1", "--data-dir", str(tmp_path), "--listen",
        f"127.0.0.1:{port}",
    )  # fmt: skip
    try:
        up.wait_for("stop with Ctrl-C", timeout_s=180)
        banner = up.output().split("try:", 1)[1].split("stop with Ctrl-C", 1)[0]
        commands = []
        for line in banner.splitlines():
            command = line.split("|", 1)[-1].split("#", 1)[0].strip()
            if command and "JOB_ID" not in command:
                commands.append(command)
        assert len(commands) >= 4, banner
        for command in commands:
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr, (command, done.stderr)
        _stop(up)
    finally:
        up.kill()
