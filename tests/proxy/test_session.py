"""Sessions against the real machine in-process (LocalQueue), without sockets.

The failure paths a network makes hard to stage: a session the machine dropped (a lease ran
out) is rebuilt; an unavailable queue is retried with the same request id, then reported as
INTERNAL_ERROR; a wake-up that arrives before the ``Waiting`` reply is not lost.
"""

from __future__ import annotations

import asyncio

import pytest

from cluster.clock import FakeClock
from jobqueue.interface import QueueUnavailable
from jobqueue.local import LocalQueue
from proxy import events as e
from proxy import render
from proxy.server import ProxyServer
from proxy.session import ProxyContext, Session
from statemachine import commands as sm
from statemachine import replies as r


def _process_stats() -> render.ProcessStats:
    return render.ProcessStats(1, "v", 0, 0, 0, False, "0" * 16, "h", "o", "p")


class FlakyQueue:
    """A LocalQueue that raises QueueUnavailable for the first ``failures`` applies of each
    command type in ``flaky`` (as a cluster does while it elects a leader)."""

    def __init__(self, inner: LocalQueue, failures: int, flaky: tuple[type, ...]) -> None:
        self.inner = inner
        self.failures = failures
        self.flaky = flaky
        self.seen: list[sm.Command] = []

    async def apply(self, command: sm.Command) -> r.Reply:
        self.seen.append(command)
        if isinstance(command, self.flaky) and self.failures > 0:
            self.failures -= 1
            raise QueueUnavailable("no leader")
        return await self.inner.apply(command)

    def subscribe(self, proxy_id: str, handler) -> None:  # type: ignore[no-untyped-def]
        self.inner.subscribe(proxy_id, handler)

    async def close(self) -> None:
        await self.inner.close()


def _context(queue: object, retry_for_s: float = 5.0) -> ProxyContext:
    ctx = ProxyContext("proxy1", queue, _process_stats, retry_for_s=retry_for_s)  # type: ignore[arg-type]
    queue.subscribe("proxy1", ctx.deliver)  # type: ignore[attr-defined]
    return ctx


async def _session(ctx: ProxyContext) -> Session:
    session = Session(ctx, ctx.new_client_id())
    await session.open()
    return session


async def test_a_dropped_session_is_rebuilt_with_tube_and_watches_then_the_command_runs() -> None:
    queue = LocalQueue(clock=FakeClock())
    ctx = _context(queue)
    s = await _session(ctx)
    assert await s.handle(e.Use("jobs")) == b"USING jobs\r\n"
    assert await s.handle(e.Watch("jobs")) == b"WATCHING 2\r\n"
    assert await s.handle(e.Ignore("default")) == b"WATCHING 1\r\n"
    await queue.apply(sm.DropProxy("proxy1"))  # what a lease expiry does
    assert await s.handle(e.Put(0, 0, 60, b"x")) == b"INSERTED 1\r\n"
    assert await s.handle(e.ListTubesWatched()) == render.tube_list(("jobs",))
    assert await s.handle(e.ListTubeUsed()) == b"USING jobs\r\n"
    assert await s.handle(e.Reserve(0, True)) == b"RESERVED 1 1\r\nx\r\n"


async def test_an_unavailable_queue_is_retried_with_the_same_put_request_id() -> None:
    queue = FlakyQueue(LocalQueue(clock=FakeClock()), failures=3, flaky=(sm.Put,))
    s = await _session(_context(queue))
    assert await s.handle(e.Put(0, 0, 60, b"x")) == b"INSERTED 1\r\n"
    puts = [c for c in queue.seen if isinstance(c, sm.Put)]
    assert len(puts) == 4
    assert len({p.request_id for p in puts}) == 1


async def test_a_queue_unavailable_too_long_gives_internal_error_and_the_session_goes_on() -> None:
    queue = FlakyQueue(LocalQueue(clock=FakeClock()), failures=1000, flaky=(sm.Peek,))
    s = await _session(_context(queue, retry_for_s=0.2))
    assert await s.handle(e.Peek(1)) == b"INTERNAL_ERROR\r\n"
    assert await s.handle(e.ListTubeUsed()) == b"USING default\r\n"


class EagerWakeQueue(LocalQueue):
    """Delivers the outcome's wake-ups before returning the reply, as a remote queue whose
    wake-up stream is faster than its reply may."""

    async def apply(self, command: sm.Command) -> r.Reply:
        reply = self.apply_now(command)
        await asyncio.sleep(0.05)  # the wake-up (if any) was already handed over
        return reply


async def test_a_wakeup_that_arrives_before_the_waiting_reply_is_not_lost() -> None:
    queue = EagerWakeQueue(clock=FakeClock())
    ctx = _context(queue)
    worker, producer = await _session(ctx), await _session(ctx)
    reserve = asyncio.create_task(worker.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)  # the Reserve is applied; its Waiting reply is not back yet
    assert await producer.handle(e.Put(0, 0, 60, b"w")) == b"INSERTED 1\r\n"
    assert await asyncio.wait_for(reserve, 5) == b"RESERVED 1 1\r\nw\r\n"


async def test_a_wakeup_for_another_request_is_ignored() -> None:
    queue = LocalQueue(clock=FakeClock())
    ctx = _context(queue)
    s = await _session(ctx)
    reserve = asyncio.create_task(s.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)
    ctx.deliver(r.Wakeup(s.client_id, "proxy1", "stale-request", r.TimedOut()))
    await asyncio.sleep(0.01)
    assert not reserve.done()
    s.peer_gone(half_closed=True)
    assert await reserve == b"TIMED_OUT\r\n"


async def test_drain_mode_refuses_puts_but_counts_them() -> None:
    queue = LocalQueue(clock=FakeClock())
    ctx = _context(queue)
    s = await _session(ctx)
    ctx.draining = True
    assert await s.handle(e.Put(0, 0, 60, b"x")) == b"DRAINING\r\n"
    stats = await queue.apply(sm.Stats())
    assert isinstance(stats, r.ServerStats)
    assert (stats.cmd_put, stats.total_jobs) == (1, 0)


@pytest.mark.parametrize("job_id", [2**63, 2**64 - 1])
async def test_job_ids_beyond_int64_are_not_found_and_counted(job_id: int) -> None:
    queue = LocalQueue(clock=FakeClock())
    s = await _session(_context(queue))
    assert await s.handle(e.Peek(job_id)) == b"NOT_FOUND\r\n"
    stats = await queue.apply(sm.Stats())
    assert isinstance(stats, r.ServerStats)
    assert stats.cmd_peek == 1


async def test_a_reserve_from_a_dropped_session_waits_under_a_new_request_id_and_is_woken() -> None:
    queue = LocalQueue(clock=FakeClock())
    ctx = _context(queue)
    worker, producer = await _session(ctx), await _session(ctx)
    await queue.apply(sm.Disconnect(worker.client_id))
    reserve = asyncio.create_task(worker.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)
    assert not reserve.done()
    assert await producer.handle(e.Put(0, 0, 60, b"w")) == b"INSERTED 1\r\n"
    assert await asyncio.wait_for(reserve, 5) == b"RESERVED 1 1\r\nw\r\n"


class AmbiguousReserveQueue(LocalQueue):
    """Applies every Reserve but loses the reply (the outcome of a call cut by a failover), and
    answers a retry under the same request id with the first reply, as a cluster's request
    window does (cluster/replicated.py; the machine keeps none)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.answered: dict[str, r.Reply] = {}

    async def apply(self, command: sm.Command) -> r.Reply:
        request_id = getattr(command, "request_id", "")
        reply = self.answered.get(request_id) if request_id else None
        if reply is None:
            reply = self.apply_now(command)
            if request_id:
                self.answered[request_id] = reply
        if isinstance(command, sm.Reserve) and self.lose_replies:
            raise QueueUnavailable("reply lost")
        return reply

    lose_replies = True


@pytest.mark.parametrize("put_before_retry", [True, False])
async def test_a_reserve_whose_reply_was_lost_is_settled_by_the_next_reserve(
    put_before_retry: bool,
) -> None:
    queue = AmbiguousReserveQueue(clock=FakeClock())
    ctx = _context(queue, retry_for_s=0.1)
    worker, producer = await _session(ctx), await _session(ctx)
    assert await worker.handle(e.Reserve(None)) == b"INTERNAL_ERROR\r\n"
    queue.lose_replies = False
    if put_before_retry:  # the machine answers the lost wait while nobody listens
        assert await producer.handle(e.Put(0, 0, 60, b"w")) == b"INSERTED 1\r\n"
        assert await worker.handle(e.Reserve(None)) == b"RESERVED 1 1\r\nw\r\n"
        return
    reserve = asyncio.create_task(worker.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)
    assert await producer.handle(e.Put(0, 0, 60, b"w")) == b"INSERTED 1\r\n"
    assert await asyncio.wait_for(reserve, 5) == b"RESERVED 1 1\r\nw\r\n"


class GappyQueue(LocalQueue):
    """A LocalQueue whose wake-up stream can hold back wake-ups and report a gap, as
    RemoteQueue does when a node could not replay what a proxy missed."""

    def __init__(self) -> None:
        super().__init__(clock=FakeClock())
        self.holding = False
        self.held: list[r.Wakeup] = []
        self.on_gap = lambda proxy_id: None
        self._real: list = []  # type: ignore[type-arg]

    def subscribe(self, proxy_id: str, handler) -> None:  # type: ignore[no-untyped-def]
        self._real.append(handler)
        super().subscribe(proxy_id, self._maybe_hold)

    def _maybe_hold(self, wakeup: r.Wakeup) -> None:
        if self.holding:
            self.held.append(wakeup)
        else:
            for handler in self._real:
                handler(wakeup)

    def release_held(self) -> None:
        for wakeup in self.held:
            for handler in self._real:
                handler(wakeup)
        self.held.clear()


async def _gappy_server() -> tuple[GappyQueue, ProxyServer, Session, Session]:
    queue = GappyQueue()
    server = ProxyServer(queue)
    queue.subscribe(server.proxy_id, server.ctx.deliver)
    queue.on_gap = server._on_gap
    worker = Session(server.ctx, server.ctx.new_client_id())
    producer = Session(server.ctx, server.ctx.new_client_id())
    await worker.open()
    await producer.open()
    return queue, server, worker, producer


async def test_a_wakeup_lost_in_a_gap_is_recovered_by_reserving_again() -> None:
    queue, server, worker, producer = await _gappy_server()
    reserve = asyncio.create_task(worker.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)
    queue.holding = True
    assert await producer.handle(e.Put(0, 0, 60, b"lost")) == b"INSERTED 1\r\n"
    queue.held.clear()  # the stream never delivers it
    queue.holding = False
    queue.on_gap(server.proxy_id)
    await asyncio.sleep(0.05)
    assert not reserve.done()  # waiting again, under a new request id
    assert await producer.handle(e.Put(0, 0, 60, b"next")) == b"INSERTED 2\r\n"
    assert await asyncio.wait_for(reserve, 5) == b"RESERVED 2 4\r\nnext\r\n"


async def test_a_late_answer_to_a_reserve_given_up_as_lost_goes_to_the_next_reserve() -> None:
    queue, server, worker, producer = await _gappy_server()
    reserve = asyncio.create_task(worker.handle(e.Reserve(None)))
    await asyncio.sleep(0.01)
    queue.holding = True
    assert await producer.handle(e.Put(0, 0, 60, b"late")) == b"INSERTED 1\r\n"
    queue.holding = False
    queue.on_gap(server.proxy_id)
    await asyncio.sleep(0.05)
    queue.release_held()  # the answer shows up after all
    assert await producer.handle(e.Put(0, 0, 60, b"next")) == b"INSERTED 2\r\n"
    assert await asyncio.wait_for(reserve, 5) == b"RESERVED 2 4\r\nnext\r\n"
    assert await worker.handle(e.Reserve(None)) == b"RESERVED 1 4\r\nlate\r\n"


async def test_the_lease_is_renewed_only_while_the_proxy_has_connections_and_connect_renews_it():
    # An idle cluster writes nothing: a proxy without connections lets its lease lapse (there is
    # nothing to free), and its first new connection starts the lease in the Connect itself.
    queue = FlakyQueue(LocalQueue(clock=FakeClock()), failures=0, flaky=())
    server = ProxyServer(queue, lease_ms=300)  # type: ignore[arg-type]
    await server.start("127.0.0.1:0")
    try:
        await asyncio.sleep(0.45)  # more than one renewal period, no connection
        assert [type(cmd) for cmd in queue.seen] == [sm.RenewLease]
        session = Session(server.ctx, server.ctx.new_client_id())
        await session.open()
        assert queue.seen[-1] == sm.Connect(session.client_id, server.proxy_id, 300)
        await asyncio.sleep(0.25)
        assert sm.RenewLease(server.proxy_id, 300) in queue.seen[2:]
    finally:
        await server.stop()
