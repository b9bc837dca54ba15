"""Clients: one beanstalkd connection each, with its used tube, watch list, jobs and wait.

Theory of operation: a client is registered by ``Connect`` under the proxy that serves it and
lives until ``Disconnect``, ``DropProxy`` or the expiry of its proxy's lease. It holds:

- ``used``: the tube its puts, peeks and kicks go to (a reference that keeps the tube alive);
- ``watched``: its watch list in beanstalkd's order (insertion order; a removal moves the last
  entry into the freed slot, as ms.c does);
- ``watch_set``: the same tubes as a set, for membership tests only (never iterated);
- ``reserved``: the jobs it holds, by id;
- a wait: when a reserve found nothing, ``wait_seq`` is its arrival number (global, increasing,
  never 0), ``wait_deadline_ms`` its timeout (None waits forever) and ``wait_request_id`` the
  request id that the eventual ``Wakeup`` carries. ``wait_seq == 0`` means not waiting.

``producer`` and ``worker`` are beanstalkd's per-connection flags behind current-producers and
current-workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from statemachine.limits import DEADLINE_SOON_MARGIN_MS

if TYPE_CHECKING:
    from statemachine.jobs import Job
    from statemachine.tubes import Tube


class Client:
    """One connection's replicated state."""

    __slots__ = (
        "id",
        "producer",
        "proxy_id",
        "reserved",
        "used",
        "wait_deadline_ms",
        "wait_request_id",
        "wait_seq",
        "watch_set",
        "watched",
        "worker",
    )

    def __init__(self, client_id: str, proxy_id: str, default_tube: Tube) -> None:
        self.id = client_id
        self.proxy_id = proxy_id
        self.used = default_tube
        self.watched: list[Tube] = [default_tube]
        self.watch_set: set[Tube] = {default_tube}
        self.reserved: dict[int, Job] = {}
        self.producer = False
        self.worker = False
        self.wait_seq = 0
        self.wait_deadline_ms: int | None = None
        self.wait_request_id = ""

    def soon_ms(self) -> int | None:
        """When the soonest-expiring job it holds enters its last second (DEADLINE_SOON), or
        None when it holds nothing. May lie in the past."""
        if not self.reserved:
            return None
        return min(job.deadline_ms for job in self.reserved.values()) - DEADLINE_SOON_MARGIN_MS

    def watches(self, tube: Tube) -> bool:
        return tube in self.watch_set

    def __repr__(self) -> str:
        return f"Client({self.id!r}, proxy={self.proxy_id!r}, wait_seq={self.wait_seq})"


def remove_moving_last(items: list[Tube], index: int) -> None:
    """beanstalkd's ms.c removal: the last entry moves into the freed slot."""
    last = items.pop()
    if index < len(items):
        items[index] = last
