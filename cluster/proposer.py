"""The leader's proposer: stamps time, batches requests into log entries, resolves outcomes.

Theory of operation. Requests arrive on the node's asyncio loop. They wait in ``pending`` until
the next flush, which runs at the end of the current loop iteration, so every request that
arrived together goes into one log entry (group commit). Up to ``max_inflight`` entries are in
flight at once; a single client therefore pays one Raft round trip, and a crowd of clients
shares round trips. The flush stamps ``now_ms`` from the leader's clock; the state machine clamps
it.

pysyncobj calls back in its tick (on the loop, ``cluster.raft_loop``); the callback hands the
result over once the leader's journal holds the entry on disk (``JournalSync.when_durable``:
the follower side already synced before acknowledging; the leader's sync started when the
entry was appended, on its own thread, so a tick never waits for the disk). pysyncobj's fail
reasons are split by what they mean for a retry: never applied (a full queue, no leader, not
the leader, an entry replaced) -> ``NotApplied``; maybe applied -> ``Ambiguous``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from pysyncobj import FAIL_REASON

from cluster import envelope
from cluster.clock import LeaderTime
from cluster.errors import Ambiguous, NotApplied
from statemachine.replies import Reply

log = structlog.get_logger(__name__)

MAX_BATCH_REQUESTS = 2048
EXPIRY_SWEEP_S = 0.25  # how late a call's timeout may fire (its timeout is seconds)
MAX_BATCH_BYTES = 1 << 20
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: "the leader's proposal queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "a new leader replaced the entry",
    FAIL_REASON.NOT_LEADER: "this node stopped being the leader",
    FAIL_REASON.REQUEST_DENIED: "the leader refused the entry",
}

# (replicated.OK, the reply, raft index) or (replicated.REFUSED, why as bytes, raft index)
Result = tuple[int, Reply | bytes, int]


class _Call:
    """One caller's requests: settled one by one as their entries commit (several entries when
    it is large), answered through one future once all are. One future per call, not per
    request: each future's completion costs the loop a callback, which showed in the leader's CPU
    per put (bench/proxy_cost.py)."""

    __slots__ = ("error", "future", "remaining", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.future: asyncio.Future[list[Result]] = loop.create_future()
        self.results: list[Result | None] = [None] * size
        self.remaining = size
        self.error: BaseException | None = None

    def settle(self, position: int, result: Result | None, error: BaseException | None) -> None:
        if self.future.done():  # the caller gave up (timeout or cancel)
            return
        self.results[position] = result
        if error is not None and self.error is None:
            self.error = error
        self.remaining -= 1
        if self.remaining == 0:
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.results)  # type: ignore[arg-type]  # all set

    def expire(self, timeout_s: float) -> None:
        if not self.future.done():
            self.future.set_exception(
                Ambiguous(
                    f"no outcome within {timeout_s:.0f} s (the cluster may have lost its "
                    "quorum): it may still be applied; retry with the same request id"
                )
            )


_Pending = tuple[envelope.Request, _Call, int]  # a request, its call, its place in the call


class Proposer:
    def __init__(
        self,
        propose: Callable[..., None],
        clock: LeaderTime,
        when_durable: Callable[[int, Callable[[], None]], None],
        last_applied: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
        max_inflight: int = 8,
        timeout_s: float = 4.0,  # then Ambiguous: the client retries with the request id
        on_commit: Callable[[float], None] | None = None,
        remember: Callable[[bytes, list[envelope.Request]], None] | None = None,
    ) -> None:
        self._propose = propose  # MachineConsumer.apply_batch
        self._clock = clock
        self._when_durable = when_durable  # JournalSync.when_durable
        self._last_applied = last_applied
        self._loop = loop
        self._max_inflight = max_inflight
        self._timeout_s = timeout_s
        self._on_commit = on_commit or (lambda seconds: None)
        self._remember = remember or (lambda entry, requests: None)  # remember_decoded
        self._pending: deque[_Pending] = deque()
        # Calls in the order they came, with their deadlines (all the same timeout, so in
        # deadline order too): one sweep every EXPIRY_SWEEP_S expires the late ones. A timer
        # per call cost the loop a heap push, a pop and a cancel on every put.
        self._expiring: deque[tuple[float, _Call]] = deque()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._inflight_batches: dict[int, list[_Pending]] = {}  # by id(): proposed, unanswered
        self._flush_scheduled = False
        # pysyncobj ticks on the loop (cluster.raft_loop): a result found there needs no
        # thread-safe hand-over. The proposer is built on the loop's thread.
        self._loop_thread = threading.get_ident()

    async def submit(self, request: envelope.Request) -> Result:
        """Replicate one request and return its result; raise NotApplied or Ambiguous."""
        return (await self.submit_many([request]))[0]

    def submit_many(self, requests: list[envelope.Request]) -> asyncio.Future[list[Result]]:
        """Replicate requests in this order (they may share a log entry); the future's result is
        theirs. When one fails the future raises the first failure, once every request in it
        is settled. A future, not a coroutine: the caller awaits it directly, one frame fewer
        per command. Cancelling it withdraws the requests not yet sent (``_take_batch``)."""
        call = _Call(self._loop, len(requests))
        if not requests:
            call.future.set_result([])
            return call.future
        if len(requests) == 1:  # nearly every call: no generator to build
            self._pending.append((requests[0], call, 0))
        else:
            self._pending.extend((request, call, i) for i, request in enumerate(requests))
        self._schedule_flush()
        self._expiring.append((self._loop.time() + self._timeout_s, call))
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(EXPIRY_SWEEP_S, self._sweep)
        return call.future

    def _sweep(self) -> None:
        """Expire the calls past their deadline; forget the answered ones at the front."""
        self._sweep_timer = None
        now = self._loop.time()
        expiring = self._expiring
        while expiring and (expiring[0][0] <= now or expiring[0][1].future.done()):
            _, call = expiring.popleft()
            call.expire(self._timeout_s)  # no-op when answered
        if expiring:
            self._sweep_timer = self._loop.call_later(EXPIRY_SWEEP_S, self._sweep)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and len(self._inflight_batches) < self._max_inflight:
            batch = self._take_batch()
            if batch:
                self._send(batch)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH_REQUESTS and size < MAX_BATCH_BYTES:
            pending = self._pending.popleft()
            if not pending[1].future.done():  # the caller gave up (timeout or cancel): skip it
                batch.append(pending)
                size += len(pending[0].payload)
        return batch

    def _send(self, batch: list[_Pending]) -> None:
        requests = [request for request, _, _ in batch]
        entry = envelope.encode_batch(requests)
        self._remember(entry, requests)
        started = time.perf_counter()
        self._inflight_batches[id(batch)] = batch

        def on_result(result: Any, error: int) -> None:  # runs in pysyncobj's tick
            # Nothing may escape from here: pysyncobj would apply the entry again (see
            # replicated._quietly). A closed loop (node stopping) just drops the answer.
            try:
                index = self._last_applied() + 1  # called just before pysyncobj counts it

                def hand_over() -> None:  # in a tick on the loop, or on the syncer thread
                    if threading.get_ident() == self._loop_thread:  # no self-pipe write
                        self._loop.call_soon(self._resolve, batch, result, error, index, started)
                        return
                    # A closed loop (the node is stopping) just drops the answer.
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(
                            self._resolve, batch, result, error, index, started
                        )

                if error == FAIL_REASON.SUCCESS:
                    self._when_durable(index, hand_over)
                else:
                    hand_over()
            except Exception:
                log.warning("could not hand a commit result to the loop", exc_info=True)

        try:
            self._propose(entry, self._clock.now_ms(), callback=on_result)
        except Exception as exc:  # the proposal never entered the queue
            self._resolve(batch, None, -1, 0, started, exc)

    def _resolve(
        self,
        batch: list[_Pending],
        result: Any,
        error: int,
        index: int,
        started: float,
        exc: BaseException | None = None,
    ) -> None:
        self._inflight_batches.pop(id(batch), None)
        if error == FAIL_REASON.SUCCESS:
            self._on_commit(time.perf_counter() - started)
            for (_, call, position), (status, payload) in zip(batch, result, strict=True):
                call.settle(position, (status, payload, index), None)
        else:
            failure = self._failure(error, exc)
            for _, call, position in batch:
                call.settle(position, None, failure)
        if self._pending:
            self._schedule_flush()

    def abandon_inflight(self) -> None:
        """This node stopped leading: answer every call with an entry in flight now, as "may
        have been applied", instead of when pysyncobj learns the entry's fate (after a new
        leader's entries reach this node, or never while it is cut off). The caller retries
        on the new leader with the same request id, so an entry that commits after all is
        applied once. The batches stay counted until pysyncobj calls back for them."""
        failure = Ambiguous(
            "this node stopped being the leader with the command in flight: it may still be "
            "applied; retry with the same request id"
        )
        for batch in list(self._inflight_batches.values()):
            for _, call, _position in batch:
                if not call.future.done():
                    call.future.set_exception(failure)

    @staticmethod
    def _failure(error: int, exc: BaseException | None) -> Exception:
        if exc is not None:
            return NotApplied(f"could not propose: {exc}: safe to retry")
        reason = _NOT_APPLIED.get(error)
        if reason is not None:
            return NotApplied(f"not applied ({reason}): safe to retry")
        return Ambiguous(
            f"outcome unknown (pysyncobj reason {error}: leader changed or stale index): "
            "retry with the same request id"
        )
