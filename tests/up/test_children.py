"""beanraft.children.Supervisor with small stand-in children (plain python -c scripts)."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest
from harness import wait_until

from beanraft.children import ChildDied, ChildSpec, Supervisor


def _py(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", code])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for_line(out: io.StringIO, text: str, timeout_s: float = 30) -> None:
    wait_until(lambda: text in out.getvalue(), timeout_s, f"{text!r} in {out.getvalue()!r}")


def test_output_is_prefixed_with_the_childs_name_and_kept_in_its_log(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(tmp_path, out)
    supervisor.start(_py("alpha", "print('one'); print('two'); import time; time.sleep(60)"))
    try:
        _wait_for_line(out, "two")
    finally:
        supervisor.stop(["alpha"], timeout_s=10)
    assert "alpha    | one\nalpha    | two\n" in out.getvalue()
    assert (tmp_path / "alpha.log").read_text() == "one\ntwo\n"


def test_stop_terminates_children_with_sigterm(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, io.StringIO())
    child = supervisor.start(_py("sleeper", "import time; time.sleep(60)"))
    supervisor.stop(["sleeper"], timeout_s=10)
    assert child.process.returncode == -15
    assert _gone(child.process.pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(tmp_path, out)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready')\n"
    code += "while True: time.sleep(1)"
    child = supervisor.start(_py("stubborn", code))
    _wait_for_line(out, "ready")
    started = time.monotonic()
    supervisor.stop(["stubborn"], timeout_s=1)
    assert child.process.returncode == -9
    assert time.monotonic() - started < 10
    assert "stubborn did not stop in 1 s: killing it" in out.getvalue()


def test_a_child_that_dies_is_reported_with_its_code_and_last_lines(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, io.StringIO())
    supervisor.start(_py("crasher", "print('cannot bind'); raise SystemExit(7)"))
    with pytest.raises(ChildDied) as caught:
        supervisor.wait_until("forever", lambda: False, timeout_s=60, progress=lambda s: None)
    message = str(caught.value)
    assert message.startswith("crasher exited with code 7. Its last lines:\n    cannot bind\n")
    assert f"Full output: {tmp_path}/crasher.log" in message


def test_waiting_gives_up_after_the_timeout(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, io.StringIO())
    notes: list[str] = []
    with pytest.raises(TimeoutError, match="the moon was not ready after 4 s"):
        supervisor.wait_until("the moon", lambda: False, timeout_s=4, progress=notes.append)
    assert notes and notes[0].startswith("still waiting for the moon")


def test_kill_all_kills_the_childs_whole_process_group(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(tmp_path, out)
    code = "import subprocess, sys, time\n"
    code += "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    code += "print('grandchild', p.pid, flush=True); time.sleep(60)"
    child = supervisor.start(_py("parent", code))
    _wait_for_line(out, "grandchild ")
    grandchild = int(out.getvalue().split("grandchild ")[1].split()[0])
    supervisor.kill_all()
    child.process.wait(timeout=10)
    wait_until(lambda: _gone(grandchild), 10, "the grandchild gone")
