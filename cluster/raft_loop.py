"""pysyncobj driven by the node's asyncio loop: one thread runs Raft, the listener and gRPC.

Why. pysyncobj runs its ticks on a thread of its own. With that thread beside the node's asyncio
loop, every log entry crossed between the two: the proposal through a pipe, its result through
the loop's self-pipe, and the GIL back and forth. Each hand-over is a wake-up. On the 2-core VM
about a fifth of the leader's CPU went to scheduling and wake-ups (``perf``: 1.56 context
switches per put). With the tick on the loop, the three servers spent 0.865 of the CPU per put
and did 1.06x the puts (``bench/ab_direct.py``, docs/benchmarks.md).

How. ``LoopPoller`` is pysyncobj's poller interface over the loop's own selector: a socket
pysyncobj watches is watched by the loop. When one is ready, the loop runs pysyncobj's handler
for it and asks ``RaftDriver`` for a tick. The driver ticks (``RaftCore._onTick``, which never
waits: pysyncobj's ``poll`` returns at once, the loop does the waiting) once per loop
iteration that asked for one, again at once while rule 9 left entries to apply, and every
``TICK_PERIOD_S`` for Raft's timers (heartbeats, elections). A proposal asks for a tick too:
pysyncobj's pipe notifier is one of the watched sockets.

What runs on the loop now, and so must stay short: everything pysyncobj did on its thread
(appends, sends, applies in slices of ``raftcore.APPLY_SLICE_S``, a follower's journal sync
before it acknowledges, installing a dump). The leader's own journal sync stays on the syncer
thread (``cluster.durability``), so a leader's loop never waits for its disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# pysyncobj's event mask bits (pysyncobj.poller.POLL_EVENT_TYPE).
READ, WRITE, ERROR = 1, 2, 4
# Raft's timers need a tick this often with no I/O (pysyncobj's own thread polled with a 50 ms
# timeout; heartbeats are due every 50 ms).
TICK_PERIOD_S = 0.02

Handler = Callable[[int, int], None]


class LoopPoller:
    """pysyncobj's ``Poller`` (``subscribe``, ``unsubscribe``, ``poll``) on an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[], None]) -> None:
        self._loop = loop
        self._on_event = on_event
        self._handlers: dict[int, Handler] = {}

    def subscribe(self, descr: int, callback: Handler, eventMask: int) -> None:
        self.unsubscribe(descr)
        self._handlers[descr] = callback
        if eventMask & (READ | ERROR):  # the loop reports an error as readable
            self._loop.add_reader(descr, self._ready, descr, READ)
        if eventMask & WRITE:
            self._loop.add_writer(descr, self._ready, descr, WRITE)

    def unsubscribe(self, descr: int) -> None:
        if self._handlers.pop(descr, None) is None:
            return
        try:
            self._loop.remove_reader(descr)
            self._loop.remove_writer(descr)
        except OSError:
            # pysyncobj closed the socket before unsubscribing it: the kernel has forgotten it
            # already, the selector has not (its modify fails with EBADF). Forget it there.
            selector = getattr(self._loop, "_selector", None)
            if selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(descr)

    def poll(self, timeout: float) -> None:
        """pysyncobj's tick ends with a poll: the loop does the waiting, so return at once."""

    def _ready(self, descr: int, event: int) -> None:
        handler = self._handlers.get(descr)
        if handler is not None:
            try:
                handler(descr, event)
            except Exception:  # pysyncobj's handlers close what failed; nothing may escape
                log.warning("raft socket handler failed", exc_info=True)
        self._on_event()


class RaftDriver:
    """Ticks pysyncobj on the loop: after I/O and proposals, while entries are left to apply,
    and every ``TICK_PERIOD_S``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick: Callable[[], bool] | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self, tick: Callable[[], bool]) -> None:
        """``tick()`` runs one tick and returns whether it left entries to apply."""
        self._tick = tick
        self._periodic()

    def stop(self) -> None:
        self._tick = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def wake(self) -> None:
        """A tick soon: once per loop iteration, however many sockets asked."""
        if not self._scheduled and self._tick is not None:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        tick = self._tick
        if tick is None:
            return
        try:
            more = tick()
        except Exception:  # pysyncobj's own thread logged and went on; so do we
            log.exception("raft tick failed")
            more = False
        if more:
            self.wake()

    def _periodic(self) -> None:
        self.wake()
        self._timer = self._loop.call_later(TICK_PERIOD_S, self._periodic)
