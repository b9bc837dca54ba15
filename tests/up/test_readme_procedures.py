"""README's operator procedures, run as written: a cluster on several hosts (three loopback
addresses), add a node, restart it, remove it, replace a failed one, back up and restore to a
new cluster. Each block is taken from README.md (after its
``<!-- procedure: NAME -->`` marker) and run with bash against a real ``beanraft up`` cluster;
only its first line, the values an operator fills in, is replaced with this test's free ports.
A job put before the first procedure must be in the restored cluster at the end."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import greenstalk
import pytest
from harness import wait_until
from harness.ports import allocate as free_ports

from .test_up_orchestration import UpProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- procedure: ([a-z-]+) -->\n```sh\n(.*?)```", re.S)


def procedures() -> dict[str, str]:
    return dict(MARKER.findall((REPO / "README.md").read_text()))


def _with_values(block: str, values: dict[str, str]) -> str:
    """The block with its first line (``NAME=value ...``) holding ``values`` instead; the
    README's line must name exactly these variables."""
    first, rest = block.split("\n", 1)
    names = [item.split("=", 1)[0] for item in first.split()]
    assert names == list(values), f"the README's first line names {names}, not {list(values)}"
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()) + "\n" + rest


class Shell:
    """Runs blocks in one directory with ``beanraft`` on PATH and its own client config."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "BEANRAFT_CONFIG": str(cwd / "client.json"),
        }

    def run(self, name: str, values: dict[str, str], timeout_s: float = 180) -> str:
        script = _with_values(procedures()[name], values)
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert done.returncode == 0, f"{name} failed:\n{script}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout


def _pids_of(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _wait_gone(pattern: str, timeout_s: float = 30) -> None:
    wait_until(lambda: not _pids_of(pattern), timeout_s, f"{pattern!r} gone", poll_s=0.1)


def test_every_readme_procedure_runs_as_written(tmp_path: Path) -> None:
    assert set(procedures()) == {
        "several-hosts", "add-node", "restart-node", "remove-node", "replace-node",
        "backup-restore",
    }  # fmt: skip
    port, restored_port = free_ports(2)
    shell = Shell(tmp_path)
    up = UpProcess.__new__(UpProcess)
    up.lines = []
    up.process = subprocess.Popen(
        [sys.executable, "-m", "beanraft", "up", "--nodes", "3", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=shell.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    up._start_reader()
    try:
        up.wait_for("beanraft is up", timeout_s=180)
        with greenstalk.Client(("127.0.0.1", port)) as client:
            kept = client.put("before every procedure")
        member = json.loads((tmp_path / "data" / "up.json").read_text())["nodes"][0]["grpc_addr"]
        raft_4, grpc_4, raft_5, grpc_5 = (f"127.0.0.1:{p}" for p in free_ports(4))
        node_4 = {"ID": "4", "RAFT": raft_4, "GRPC": grpc_4}

        shell.run("add-node", {**node_4, "MEMBER": member, "MEMBERS": "4"})
        first = _pids_of("--node-id 4 --data-dir")
        assert len(first) == 1
        shell.run("restart-node", {**node_4, "MEMBER": member, "MEMBERS": "4"})
        assert _pids_of("--node-id 4 --data-dir") not in ([], first)  # a new process
        shell.run("remove-node", {"ID": "4", "MEMBERS": "3"})
        _wait_gone("--node-id 4 --data-dir")  # a removed node stops by itself

        node_5 = {"ID": "5", "RAFT": raft_5, "GRPC": grpc_5}
        shell.run("add-node", {**node_5, "MEMBER": member, "MEMBERS": "4"})
        for pid in _pids_of("--node-id 5 --data-dir"):
            os.kill(pid, signal.SIGKILL)  # it fails
        shell.run("replace-node", {**node_5, "MEMBER": member, "MEMBERS": "4"})
        assert (tmp_path / "data" / "node-5.failed").is_dir()

        shell.run("backup-restore", {"LISTEN": f"127.0.0.1:{restored_port}"})
        assert _pids_of(f"--data-dir restored --listen 127.0.0.1:{restored_port}")
        with greenstalk.Client(("127.0.0.1", restored_port)) as client:
            assert client.peek(kept).body == "before every procedure"
            assert client.put("after the restore") > kept  # numbering goes on after it
    finally:
        for pid in _pids_of(f"--listen 127.0.0.1:{restored_port}"):
            os.kill(pid, signal.SIGTERM)
        for node in ("4", "5"):
            for pid in _pids_of(f"--node-id {node} --data-dir"):
                os.kill(pid, signal.SIGTERM)
        up.process.send_signal(signal.SIGTERM)
        try:
            up.finish(timeout_s=90)
        finally:
            up.kill()
        _wait_gone(f"--listen 127.0.0.1:{restored_port}", 60)
        _wait_gone("--node-id 5 --data-dir", 60)


def test_the_several_hosts_procedure_runs_on_three_loopback_addresses(tmp_path: Path) -> None:
    raft, grpc_port, beanstalkd = (str(p) for p in free_ports(3))
    hosts = {"A": "127.0.0.1", "B": "127.0.0.2", "C": "127.0.0.3"}
    shell = Shell(tmp_path)
    try:
        out = shell.run(
            "several-hosts",
            {**hosts, "RAFT": raft, "GRPC": grpc_port, "BEANSTALKD": beanstalkd},
        )
        assert "(leader)" in out
        with greenstalk.Client(("127.0.0.2", int(beanstalkd))) as client:
            job_id = client.put("on host B")
        with greenstalk.Client(("127.0.0.3", int(beanstalkd))) as client:
            assert client.peek(job_id).body == "on host B"
    finally:
        for n in ("1", "2", "3"):
            for pid in _pids_of(f"--node-id {n} --data-dir n{n} "):
                os.kill(pid, signal.SIGTERM)
        for n in ("1", "2", "3"):
            _wait_gone(f"--node-id {n} --data-dir n{n} ", 60)
