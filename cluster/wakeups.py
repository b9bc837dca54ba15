"""Wake-up streams: every replica holds the same numbered ring of recent wake-ups; any node
serves a proxy's stream from it.

Theory of operation. Applying an entry appends the wake-ups it produced to the replicated ring
(``cluster.replicated``), each with the next sequence number. All replicas apply the same log, so
wake-up number N is the same on every node. A proxy's stream asks for the wake-ups of its
proxy id after the last number it saw (``after_seq``); when the node it talks to dies or stops
leading, the proxy reconnects anywhere with the same ``after_seq`` and loses nothing. If the
ring no longer holds what the proxy missed (it was away too long), the stream says so with a
``gap`` event and the proxy recovers its clients with CheckClientState.

pysyncobj's tick (on the node's loop, ``cluster.raft_loop``) calls ``notify`` after each
apply; streams wait on an asyncio event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from cluster.replicated import Wakeups

HEARTBEAT_S = 0.5  # a proxy drops a stream silent for 2 s (api/client.py)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    seq: int
    wakeup: bytes  # encoded statemachine.replies.Wakeup; b"" for a heartbeat or a gap
    gap: bool = False


class WakeupHub:
    def __init__(self, loop: asyncio.AbstractEventLoop, ring: Callable[[], Wakeups]) -> None:
        self._loop = loop
        self._ring = ring  # read through a function: a snapshot install replaces the ring
        self._event = asyncio.Event()
        self._closed = False
        self._notified: tuple[Wakeups, int] | None = None  # (ring, last_seq) last woken for

    def notify(self) -> None:
        """Thread-safe: new wake-ups may be in the ring.

        Called after every applied entry, so it wakes the loop only when the ring changed:
        most entries (puts with nobody waiting, deletes) add no wake-up, and a wake of the
        loop costs each node a self-pipe write, an epoll round and a handle run per entry."""
        ring = self._ring()
        notified = self._notified
        # A snapshot install replaces the ring object, hence the identity check.
        if notified is not None and notified[0] is ring and notified[1] == ring.last_seq:
            return
        self._notified = (ring, ring.last_seq)
        self._loop.call_soon_threadsafe(self._event.set)

    def close(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._event.set)

    def last_seq(self) -> int:
        return self._ring().last_seq

    async def stream(
        self, proxy_id: str, after_seq: int, exact: bool = False
    ) -> AsyncIterator[StreamEvent]:
        """Wake-ups for ``proxy_id`` numbered above ``after_seq`` (0 and not ``exact``: from
        now on), forever."""
        loop = asyncio.get_running_loop()
        cursor = after_seq if after_seq > 0 or exact else self.last_seq()
        yield StreamEvent(cursor, b"")  # attached: the client may now rely on the stream
        sent_at = loop.time()
        while not self._closed:
            events, cursor = self._collect(proxy_id, cursor)
            for event in events:
                yield event
            if events:
                sent_at = loop.time()
                continue
            # The heartbeat is timed from the last thing sent, not from the last notification:
            # other proxies' wake-ups notify all the time and must not keep this stream silent.
            quiet_s = loop.time() - sent_at
            if quiet_s >= HEARTBEAT_S:
                yield StreamEvent(cursor, b"")  # heartbeat: the stream is alive
                sent_at = loop.time()
                continue
            self._event.clear()
            if self._ring().last_seq > cursor:
                continue  # something arrived between collect and clear
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), HEARTBEAT_S - quiet_s)

    def _collect(self, proxy_id: str, cursor: int) -> tuple[list[StreamEvent], int]:
        wakeups = self._ring()
        if wakeups.last_seq <= cursor:
            return [], cursor
        ring = list(wakeups.ring)  # one C-level copy: atomic with respect to an apply
        first = ring[0][0] if ring else wakeups.last_seq + 1
        events = []
        if first > cursor + 1:
            events.append(StreamEvent(first - 1, b"", gap=True))
        start = max(0, cursor + 1 - first)
        events.extend(StreamEvent(seq, data) for seq, pid, data in ring[start:] if pid == proxy_id)
        return events, (ring[-1][0] if ring else wakeups.last_seq)
