"""Host uids for jobs: every worker slot holds one uid of the worker's range for its lifetime,
so no two jobs that run at the same time on this host share a uid.

Why: the kernel keeps state per uid that namespaces do not separate. RLIMIT_NPROC counts, the
inotify instance and watch limits, the user keyring, and signal and ptrace permission checks all
go by uid; with every job as 65534, job A exhausting inotify instances broke job B. One uid per
slot is enough: a slot runs one job at a time, and a job's processes all die with its PID
namespace before the slot takes the next job.

A uid is claimed with an exclusive flock on ``<lock_dir>/<uid>.lock``: several workers on one
host may share a range and still never hand out the same uid, and a worker killed with -9
releases its uids with its file descriptors (no stale lock to clean up).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass

from jobqueue.errors import BeanraftError

DEFAULT_LOCK_DIR = "/run/beanraft/uids"
# systemd's UIDS-GIDS.md leaves 1879048192-2147483647 unassigned (above the container ranges,
# below the values that tools reading uids as signed 32-bit numbers get wrong).
DEFAULT_UID_RANGE = (1_900_000_000, 1_900_009_999)


class UidRangeExhausted(BeanraftError, RuntimeError):
    """Every uid of the range is held by a running worker slot."""


@dataclass
class UidLease:
    """One claimed uid; `release` (or the process's exit) gives it back."""

    uid: int
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def parse_range(text: str) -> tuple[int, int]:
    """ "FIRST-LAST" -> (first, last), both inclusive; ValueError with a message otherwise."""
    first_text, sep, last_text = text.partition("-")
    try:
        first, last = int(first_text), int(last_text)
    except ValueError:
        raise ValueError(f"{text!r} is not a uid range such as 1900000000-1900009999") from None
    if not sep or not 1000 <= first <= last < 2**31 - 1:
        raise ValueError(
            f"{text!r}: expected FIRST-LAST with 1000 <= FIRST <= LAST < 2147483647 "
            "(a range no real user or container uses)"
        )
    return first, last


def lease(first: int, last: int, lock_dir: str = DEFAULT_LOCK_DIR) -> UidLease:
    """Claim the lowest uid of [first, last] that no worker slot on this host holds."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(first, last + 1):
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidLease(uid, fd)
    raise UidRangeExhausted(
        f"every uid in {first}-{last} is held by a running worker slot on this host; "
        "give this worker its own range with --uid-range or lower --concurrency"
    )
