"""TCP ports for the processes a test starts, held from the moment they are handed out until
the harness that asked for them releases them (after its processes stopped).

The race this closes. The old helpers bound port 0, read the port the kernel chose, closed
the socket and passed the number to a child that bound it a second or more later. Port 0
binds draw from the kernel's *ephemeral* range (``/proc/sys/net/ipv4/ip_local_port_range``),
the same range every outgoing connection on the host draws its local port from. So in the gap
between pick and bind, any client on the machine (a gRPC channel, greenstalk, another test's
node dialling its peers) could be given that very port as the local end of a connection, or
another test could pick it too; the child then failed to bind, or worse, a client talked to
the wrong server.

Three rules together remove the gap:

1. Ports come from a window *below* the ephemeral range (or above it when there is no room
   below). The kernel never hands these out for ``connect()`` or ``bind(0)``, so no outgoing
   connection and no port-0 server can take one; only an explicit bind can.
2. Within this process a port that was handed out is never handed out again until it is
   released (the ``_held`` registry); the cursor walks the window round-robin, so a released
   port is the last to come back (its old connections have long left TIME_WAIT by then).
3. Across processes (two pytest sessions, ``python -m nemesis`` beside a suite) each held port
   is a POSIX byte-range lock on byte ``port`` of one shared file under /tmp. The kernel drops
   the locks when the holder exits, however it exits, so a crashed session leaks nothing;
   and record locks are not inherited by ``fork``, so a child never keeps one alive.

A candidate is also checked bindable on 127.0.0.1 (without SO_REUSEADDR, the strict check) so
a port some other service on the host listens on is skipped.

Who releases: an owner whose processes have stopped for good (a proxy or conformance cluster,
the nemesis cluster, the executor's beanstalkd, the mTLS node) releases its ports; ports a
test keeps for a restart on the same address, or never releases, stay held until the session
ends. The window holds 10,000 ports and a full suite takes far fewer, so nothing runs short.

Ports a child binds itself (``--listen 127.0.0.1:0`` with the port printed once serving) need
none of this: there is no gap between choosing and binding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import threading

LOOPBACK = "127.0.0.1"
LOCK_FILE = "/tmp/beanraft-test-ports.lock"
WINDOW = 10_000  # how many ports below the ephemeral range we use
_LOWEST = 10_000  # stay clear of the well-known and commonly configured service ports

_lock = threading.Lock()
_held: set[int] = set()
_fd: int | None = None
_cursor: int | None = None


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ephemeral local ports (Linux; the IANA range elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 49152, 65535


def window() -> range:
    """The ports we hand out: just below the ephemeral range, else just above it."""
    low, high = ephemeral_range()
    if low - _LOWEST >= 1000:
        return range(max(_LOWEST, low - WINDOW), low)
    if 65535 - high >= 1000:
        return range(high + 1, min(65536, high + 1 + WINDOW))
    raise RuntimeError(f"no room for test ports outside the ephemeral range {low}-{high}")


def _lock_fd() -> int:
    global _fd
    if _fd is None:
        _fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(PermissionError):  # any user's session must lock it too
            os.fchmod(_fd, 0o666)
    return _fd


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def allocate(count: int = 1) -> list[int]:
    """``count`` distinct ports, each held (here and against every other session) until
    :func:`release`; they stay held until this process exits when nobody releases them."""
    global _cursor
    ports = list(window())
    with _lock:
        if _cursor is None:  # sessions start at different places, so they rarely contend
            _cursor = random.randrange(len(ports))
        taken: list[int] = []
        for _ in range(len(ports)):
            if len(taken) == count:
                break
            port = ports[_cursor]
            _cursor = (_cursor + 1) % len(ports)
            if port in _held:
                continue
            try:
                fcntl.lockf(_lock_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
            except OSError:  # another session holds it
                continue
            if not _bindable(port):
                fcntl.lockf(_lock_fd(), fcntl.LOCK_UN, 1, port, os.SEEK_SET)
                continue
            _held.add(port)
            taken.append(port)
        if len(taken) < count:
            _release_locked(taken)
            raise RuntimeError(f"no {count} free test ports in {ports[0]}-{ports[-1]}")
        return taken


def port() -> int:
    """One held port (see :func:`allocate`)."""
    return allocate(1)[0]


def release(ports: list[int] | tuple[int, ...] | set[int]) -> None:
    """Give ports back once whatever used them has stopped (unknown ports are ignored)."""
    with _lock:
        _release_locked(ports)


def _release_locked(ports: list[int] | tuple[int, ...] | set[int]) -> None:
    for p in ports:
        if p in _held:
            _held.discard(p)
            fcntl.lockf(_lock_fd(), fcntl.LOCK_UN, 1, p, os.SEEK_SET)


def held() -> frozenset[int]:
    """The ports this process holds now."""
    with _lock:
        return frozenset(_held)


def addr(port_: int) -> str:
    """``127.0.0.1:port``."""
    return f"{LOOPBACK}:{port_}"
