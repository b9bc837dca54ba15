"""One way for a test to start a child process, wait for it to serve, and stop it.

Every child writes stdout and stderr to a log file registered with :mod:`harness.logs` (so a
failing test shows its tail), readiness is an event (it accepts TCP on its port, or a
predicate holds) rather than a sleep, and a stop always reaps: SIGCONT first (a paused child
cannot act on SIGTERM), SIGTERM, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import logs
from .wait import wait_until

REPO = Path(__file__).resolve().parents[2]


class Process:
    """A child process whose output goes to ``log_path`` (appended: a restart on the same
    log keeps the earlier run's lines). With ``stdout_pipe`` stdout is a pipe the test reads
    (a proxy prints "listening HOST:PORT" there) and only stderr goes to the log."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path | str,
        label: str | None = None,
        *,
        cwd: Path | str | None = REPO,
        stdout_pipe: bool = False,
        **popen: Any,
    ) -> None:
        self.argv = argv
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log if stdout_pipe else subprocess.STDOUT,
                **popen,
            )
        self.log = logs.register(self.log_path, label, self.popen)

    # --- looking at it -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout_s: float | None = None) -> int:
        """Until the child exits by itself (a node that refuses to start, a removed node)."""
        return self.popen.wait(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return logs.tail(self.log_path, lines)

    def _exited(self, doing: str) -> RuntimeError:
        return RuntimeError(
            f"{self.log.label} exited with {self.popen.returncode} {doing}; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    # --- waiting for it ----------------------------------------------------------------------

    def wait_for_port(self, port: int, timeout_s: float = 60.0, host: str = "127.0.0.1") -> None:
        """Until the child accepts a TCP connection on ``port``; fails at once if it exits."""

        def accepts() -> bool:
            if not self.running:
                raise self._exited(f"before listening on {port}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                return True
            return False

        wait_until(accepts, timeout_s, f"{self.log.label} to listen on {host}:{port}")

    def wait_until(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Until ``predicate`` holds; fails at once if the child exits first."""

        def check() -> Any:
            if not self.running:
                raise self._exited(f"while waiting for {what}")
            return predicate()

        return wait_until(check, timeout_s, what)

    def listening_port(self) -> int:
        """The port of the "listening HOST:PORT" line a proxy prints once it serves (it bound
        port 0 itself, so there is no race to close)."""
        assert self.popen.stdout is not None, "start with stdout_pipe=True"
        line = self.popen.stdout.readline().decode()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"{self.log.label} did not start: {line!r}\n{self.log_tail()}")
        return 0 if line.split()[1].startswith("unix:") else int(line.rsplit(":", 1)[1])

    # --- stopping it -------------------------------------------------------------------------

    def pause(self) -> None:
        if self.running:
            os.kill(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.popen.pid, signal.SIGCONT)

    def send_signal(self, sig: int) -> None:
        if self.running:
            self.popen.send_signal(sig)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL and reap (a crash, as a fault test wants it)."""
        if self.running:
            self.popen.kill()
        self.popen.wait(timeout_s)
        self._close_pipe()

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGCONT + SIGTERM, SIGKILL after ``grace_s``; always reaped. The exit status."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)
                self.popen.terminate()
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        code = self.popen.wait(10)
        self._close_pipe()
        return code

    def _close_pipe(self) -> None:
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start(argv: list[str], log_path: Path | str, label: str | None = None, **kw: Any) -> Process:
    """Start ``argv`` with its output in ``log_path`` (see :class:`Process`)."""
    return Process(argv, log_path, label, **kw)


def stop_all(processes: list[Process], grace_s: float = 10.0) -> None:
    """Stop each (SIGTERM to all first, so they wind down in parallel), then reap each."""
    for p in processes:
        if p.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                p.popen.terminate()
    for p in processes:
        p.stop(grace_s)
