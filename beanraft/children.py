"""Child processes for ``beanraft up``: start them, show their output, notice deaths, stop them.

Theory of operation: each child runs in its own session, so a Ctrl-C in the terminal reaches only
``beanraft up``, which then stops the children in the order it chooses (workers before the proxy
before the nodes, so jobs are released while the cluster can still take the releases). Each
child also gets ``PR_SET_PDEATHSIG``: if ``beanraft up`` itself is killed with -9, the kernel sends
its children SIGTERM instead of leaving a cluster running nobody knows about.

One thread per child copies its output line by line to our stdout, prefixed with its name, and to
``<log_dir>/<name>.log``. Stopping is SIGTERM, a wait up to a timeout, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from jobqueue.errors import BeanraftError

_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 20

# Resolved in the parent: the child between fork and exec must not load libraries.
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildDied(BeanraftError):
    """A child exited when it should be running; the message says which, how, and its output."""


@dataclass(frozen=True)
class ChildSpec:
    """A child to run: its display name and its full argv."""

    name: str
    argv: Sequence[str]


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    reader: threading.Thread | None = None
    stopping: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def returncode_unreaped(self) -> bool:
        """True while the process has not been seen to exit (no waitpid: no lock taken)."""
        return self.process.returncode is None


class Supervisor:
    """Runs the children of one ``beanraft up``."""

    def __init__(self, log_dir: Path, out: IO[str] | None = None) -> None:
        self._log_dir = log_dir
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._width = 8
        self.children: list[Child] = []

    def say(self, name: str, line: str) -> None:
        """Print one line prefixed with ``name``, never interleaved with another."""
        with self._lock:
            self._out.write(f"{name:<{self._width}} | {line}\n")
            self._out.flush()

    def start(self, spec: ChildSpec, env: dict[str, str] | None = None) -> Child:
        """Start ``spec`` and begin copying its output."""
        self._width = max(self._width, len(spec.name))
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(spec, process)
        child.reader = threading.Thread(
            target=self._copy_output, args=(child,), name=f"log-{spec.name}", daemon=True
        )
        child.reader.start()
        self.children.append(child)
        return child

    def _copy_output(self, child: Child) -> None:
        assert child.process.stdout is not None
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_dir / f"{child.name}.log", "ab") as log_file:
            for raw in child.process.stdout:
                log_file.write(raw)
                log_file.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                child.tail.append(line)
                self.say(child.name, line)

    def check_alive(self) -> None:
        """Raise ChildDied for the first child that exited without being asked to."""
        for child in self.children:
            code = child.process.poll()
            if code is not None and not child.stopping:
                if child.reader is not None:
                    child.reader.join(timeout=2)  # let its last lines reach the screen
                raise ChildDied(_describe_exit(child, code, self._log_dir))

    def dead_children(self) -> list[tuple[Child, int]]:
        """Children that exited without being asked to (each reported once)."""
        dead = []
        for child in self.children:
            code = child.process.poll()
            if code is not None and not child.stopping:
                child.stopping = True
                dead.append((child, code))
        return dead

    def wait_until(
        self,
        what: str,
        ready: Callable[[], bool],
        timeout_s: float,
        progress: Callable[[str], None],
    ) -> None:
        """Poll ``ready`` until it is true; raise ChildDied if a child exits meanwhile and
        TimeoutError after ``timeout_s``. Reports progress every few seconds."""
        started = time.monotonic()
        next_report = started + 3
        while not ready():
            self.check_alive()
            now = time.monotonic()
            if now - started > timeout_s:
                raise TimeoutError(f"{what} was not ready after {timeout_s:.0f} s")
            if now >= next_report:
                progress(f"still waiting for {what} ({now - started:.0f} s)")
                next_report = now + 3
            time.sleep(0.1)

    def stop(self, names: Sequence[str], timeout_s: float) -> None:
        """SIGTERM the named children together, wait up to ``timeout_s``, then SIGKILL."""
        group = [c for c in self.children if c.name in names and c.process.poll() is None]
        for child in group:
            child.stopping = True
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in group:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("up", f"{child.name} did not stop in {timeout_s:.0f} s: killing it")
                _signal(child, signal.SIGKILL)
                child.process.wait()
        for child in group:
            if child.reader is not None:
                child.reader.join(timeout=2)

    def kill_all(self) -> None:
        """SIGKILL every child still running, without waiting (safe in a signal handler: the
        main thread may be inside Popen.wait, which holds a lock)."""
        for child in self.children:
            child.stopping = True
            if child.returncode_unreaped():
                _signal(child, signal.SIGKILL)


def _signal(child: Child, signum: int) -> None:
    # The whole process group: a child's own helpers (a job's init, a pool's processes) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)


def _describe_exit(child: Child, code: int, log_dir: Path) -> str:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    tail = "\n".join(f"    {line}" for line in child.tail) or "    (it printed nothing)"
    return (
        f"{child.name} {how}. Its last lines:\n{tail}\n"
        f"Full output: {log_dir / (child.name + '.log')}; command: {' '.join(child.spec.argv)}"
    )
