"""``beanraft up`` end to end with stand-in children (tests/up/stand_in_beanraft.py): start,
wait for every node's beanstalkd listener, print where things listen, stop on SIGTERM with no
child left, resume on the same addresses, and fail clearly when a child dies at start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import logs, wait_until
from harness.ports import allocate as free_ports

DRIVER = Path(__file__).with_name("run_up_with_stand_ins.py")


class UpProcess:
    """A running ``up`` whose output is collected line by line."""

    def __init__(self, *flags: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._start_reader()

    def _start_reader(self) -> None:
        # The output also goes to a log registered with the harness: a failing test shows it.
        self.log_path = Path(tempfile.mkstemp(prefix="beanraft-up-", suffix=".log")[1])
        logs.register(self.log_path, "beanraft up", self.process)  # type: ignore[arg-type]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with open(self.log_path, "a") as log:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        def printed() -> bool:
            if text in self.output():
                return True
            assert self.process.poll() is None, self.output()  # it exited without printing it
            return False

        wait_until(printed, timeout_s, f"{text!r} in the output of beanraft up")

    def child_pids(self) -> dict[str, int]:
        found = re.findall(r"started (\S+) \(pid (\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}

    def finish(self, timeout_s: float = 60) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it has exited and only waits to be reaped.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def _run_until_up(data_dir: Path, listen: str, *extra: str) -> UpProcess:
    up = UpProcess("--nodes", "3", "--data-dir", str(data_dir), "--listen", listen, *extra)
    up.wait_for("beanraft is up")
    return up


def test_up_starts_everything_stops_on_sigterm_and_resumes_on_the_same_addresses(
    tmp_path: Path,
) -> None:
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    up = _run_until_up(tmp_path, listen, "--workers", "2")
    try:
        up.wait_for("stop with Ctrl-C")  # the summary's last line: all of it has been read
        pids = up.child_pids()
        assert sorted(pids) == ["node-1", "node-2", "node-3", "worker"]  # no proxy: direct path
        assert all(_alive(pid) for pid in pids.values())
        output = up.output()
        assert f"beanstalkd protocol  {listen}" in output
        assert re.search(r"node-2 +\| node 2 serving gRPC on 127\.0\.0\.1:\d+", output)
        assert re.search(rf"node-1 +\| node 1 beanstalkd on {re.escape(listen)}", output)
        # The pool dials every node's listener, node 1's (the clients' address) first.
        up.wait_for(" x2")  # the worker's own line comes on its own time
        worker = re.search(r"worker for (\S+) x2", up.output())
        assert worker is not None
        listeners = worker.group(1).split(",")
        assert listeners[0] == listen and len(set(listeners)) == 3
        assert f"greenstalk.Client(('127.0.0.1', {listen.split(':')[1]}), use='hello'" in output
        state = json.loads((tmp_path / "up.json").read_text())
        up.process.send_signal(signal.SIGTERM)
        assert up.finish() == 0
    finally:
        up.kill()
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert "stopped; run the same command again" in up.output()

    again = _run_until_up(tmp_path, listen)
    try:
        assert "resuming a 3-node cluster" in again.output()
        assert json.loads((tmp_path / "up.json").read_text()) == state
        starts = (tmp_path / "node-1" / "starts").read_text().splitlines()
        assert len(starts) == 2 and starts[0] == starts[1]
        again.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert again.finish() == 0
    finally:
        again.kill()
    assert not [name for name, pid in again.child_pids().items() if _alive(pid)]


def test_a_node_that_dies_at_start_stops_everything_with_its_output(tmp_path: Path) -> None:
    (tmp_path / "fail-node-2").touch()
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    up = UpProcess("--nodes", "3", "--data-dir", str(tmp_path), "--listen", listen)
    try:
        assert up.finish() == 1
    finally:
        up.kill()
    output = up.output()
    assert "start failed: node-2 exited with code 3. Its last lines:" in output
    assert "boom: node 2 cannot start" in output
    assert not [name for name, pid in up.child_pids().items() if _alive(pid)]


def test_a_second_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    up = _run_until_up(tmp_path, listen)
    try:
        second = subprocess.run(
            [sys.executable, str(DRIVER), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"another `beanraft up` is running on {tmp_path}" in second.stderr
        up.process.send_signal(signal.SIGTERM)
        assert up.finish() == 0
    finally:
        up.kill()


def test_a_child_that_dies_later_is_reported_restarted_and_up_exits_non_zero(
    tmp_path: Path,
) -> None:
    up = _run_until_up(tmp_path, f"127.0.0.1:{free_ports(1)[0]}")
    try:
        first = up.child_pids()["node-3"]
        os.kill(first, signal.SIGKILL)
        up.wait_for(
            "node-3 exited unexpectedly (signal 9); the others keep running; restarting it in 1 s"
        )
        restarted = re.compile(r"restarted node-3 \(pid (\d+)\)")
        up.wait_for("restarted node-3")
        match = restarted.search(up.output())
        assert match is not None and int(match.group(1)) != first
        assert _alive(int(match.group(1))) and _alive(up.child_pids()["node-1"])
        up.process.send_signal(signal.SIGTERM)
        assert up.finish() == 1
    finally:
        up.kill()
    assert not [name for name, pid in up.child_pids().items() if _alive(pid)]


def test_killing_up_with_sigkill_takes_its_children_down(tmp_path: Path) -> None:
    up = _run_until_up(tmp_path, f"127.0.0.1:{free_ports(1)[0]}")
    pids = up.child_pids()
    up.process.kill()  # no chance to clean up: the kernel's parent-death signal must do it
    up.finish()
    wait_until(
        lambda: not [n for n, p in pids.items() if _alive(p)], 30, "every child gone", poll_s=0.1
    )


def test_a_child_whose_restart_finds_its_data_damaged_is_not_restarted_again(
    tmp_path: Path,
) -> None:
    up = _run_until_up(tmp_path, f"127.0.0.1:{free_ports(1)[0]}")
    try:
        (tmp_path / "fail-node-2").write_text("")  # its next start exits 3, as damaged data does
        os.kill(up.child_pids()["node-2"], signal.SIGKILL)
        up.wait_for("restarted node-2")
        up.wait_for("node-2 exited unexpectedly (code 3): its data directory failed its checks")
        assert "not restarting it" in up.output()
        time.sleep(2.5)  # the scenario: past the next back-off, and no second restart
        assert up.output().count("restarted node-2") == 1
        up.process.send_signal(signal.SIGTERM)
        assert up.finish() == 1
    finally:
        up.kill()
