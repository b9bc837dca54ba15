"""The log files of the processes tests start, so a failing test's report shows what its
nodes, proxies and workers said (tests/conftest.py attaches the tails).

Every starter registers its child's log here. A log belongs to the test that was running
when it was registered; a log registered outside any test, or by a fixture that outlives the
test (module and session fixtures), stays "open" until :func:`close` and is shown for every
test that fails while it is open.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 200
TAIL_BYTES = 20 * 1024


@dataclass
class Log:
    path: Path
    label: str
    test: str | None  # the nodeid of the test running when it was registered
    process: subprocess.Popen[bytes] | None = None

    @property
    def open(self) -> bool:
        return self.process is not None and self.process.poll() is None


_logs: list[Log] = []
_current_test: str | None = None


def register(
    path: Path | str, label: str | None = None, process: subprocess.Popen[bytes] | None = None
) -> Log:
    """Remember ``path`` as the log of a process (``process``) the current test started."""
    log = Log(Path(path), label or Path(path).name, _current_test, process)
    _logs.append(log)
    return log


def begin_test(nodeid: str | None) -> None:
    """Called by tests/conftest.py around each test; forgets finished tests' stopped logs."""
    global _current_test
    _current_test = nodeid
    _logs[:] = [log for log in _logs if log.open]


def for_test(nodeid: str) -> list[Log]:
    """The logs to show when ``nodeid`` fails: its own, and those still open."""
    return [log for log in _logs if log.test == nodeid or log.open]


def tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines (at most ``max_bytes``) of ``path``."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line was cut in the middle
    return "\n".join(text[-lines:])
