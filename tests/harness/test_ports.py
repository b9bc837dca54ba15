"""The port allocator: a port handed out is never handed out again while held (in this
session or another), and every port lies outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from harness import ports


def test_ports_handed_out_lie_outside_the_ephemeral_range_and_are_bindable() -> None:
    low, high = ports.ephemeral_range()
    taken = ports.allocate(20)
    try:
        assert all(not low <= p <= high for p in taken), (taken, low, high)
        for p in taken:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    finally:
        ports.release(taken)


def test_a_held_port_is_never_handed_out_again_until_released() -> None:
    first = ports.allocate(50)
    # Enough allocations to walk far round the window: none may repeat a held port.
    later = [ports.port() for _ in range(300)]
    try:
        assert len(set(first)) == 50
        assert len(set(later)) == 300
        assert not set(first) & set(later)
        assert set(first) | set(later) <= ports.held()
    finally:
        ports.release(first)
        ports.release(later)
    assert not (set(first) | set(later)) & ports.held()


def test_a_port_held_here_is_refused_to_another_session() -> None:
    """Another process (a second pytest session) takes no port this one holds."""
    mine = ports.allocate(5)
    window = ports.window()
    try:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from harness import ports\n"
            "ports._cursor = ports.window().index(int(sys.argv[2]))\n"
            "print(' '.join(map(str, ports.allocate(5))))\n"
        )
        tests_dir = str(Path(__file__).parents[1])
        # Start the other session's walk at our first port, so it meets every one we hold.
        out = subprocess.run(
            [sys.executable, "-c", code, tests_dir, str(min(mine))],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        theirs = [int(p) for p in out.split()]
        assert len(theirs) == 5 and all(p in window for p in theirs)
        assert not set(mine) & set(theirs), (mine, theirs)
    finally:
        ports.release(mine)


def test_a_port_something_listens_on_is_skipped() -> None:
    with socket.socket() as busy:
        candidate = ports.port()
        ports.release([candidate])
        busy.bind(("127.0.0.1", candidate))
        busy.listen()
        ports._cursor = ports.window().index(candidate)  # the next walk starts at it
        got = ports.port()
        ports.release([got])
    assert got != candidate
