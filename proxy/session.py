"""One client connection's logic: codec events in, state-machine commands out, reply bytes back.

A ``Session`` is the proxy's half of a beanstalkd connection. It knows the connection's
``client_id`` and mirrors the used tube and the watch list (the machine holds the truth; the
mirror fills ``Put.tube``, ``Kick.tube`` and ``Peek*.tube`` and lets a dropped session be
rebuilt). Each event is handled to completion before the next, as beanstalkd does.

Waiting reserves: the session registers the reserve's request id before applying it, so a
wake-up that arrives (through ``JobQueue.subscribe`` only) before the ``Waiting`` reply is not
lost; ``deliver`` resolves the wait when the client id and request id match. ``peer_gone`` ends
a wait early: a half-closed peer gets ``TIMED_OUT`` (beanstalkd 1.12, section 8.1); a closed one
gets nothing and its ``Disconnect`` releases whatever the machine gave it meanwhile.

Liveness: a reserve with a timeout is always answered within its timeout plus
``RESERVE_GRACE_S`` plus ``CHECK_S`` (ARCHITECTURE.md, "Liveness"). Past the grace the session
asks the machine; a wait the machine no longer has (its answer was lost, or the proxy's lease
lapsed and the machine dropped it) is asked again at once, one the machine still has is waited
for, and with no answer from the machine the client gets TIMED_OUT.

Errors: ``QueueUnavailable`` is retried with backoff for ``retry_for_s`` with the same command
(put and reserve carry request ids, so a retry after an ambiguous outcome is not applied twice),
then the client gets ``INTERNAL_ERROR``. ``UnknownClient`` means the machine dropped this
session (its proxy's lease ran out): connect again, restore use and watches, retry once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from jobqueue.interface import JobQueue, QueueUnavailable
from proxy import events as e
from proxy import render
from statemachine import commands as sm
from statemachine import replies as r

log = structlog.get_logger(__name__)

_PEER_GONE: Final = object()
_LOST: Final = object()
_BACKOFF_FIRST_S: Final = 0.02
_BACKOFF_MAX_S: Final = 0.5
# A reserve with a timeout is answered by the machine at its timeout; this much later (the
# cluster or the wake-up stream in trouble) the session asks the machine whether it still
# waits, and answers TIMED_OUT itself if the machine does not say within CHECK_S.
RESERVE_GRACE_S: Final = 3.0
CHECK_S: Final = 1.5  # so every timed reserve is answered within its timeout + 5 s


@dataclass
class ProxyContext:
    """What every session of one proxy process shares."""

    proxy_id: str
    queue: JobQueue
    process_stats: Callable[[], render.ProcessStats]
    lease_ms: int = 0  # 0: no lease (a queue no other process shares)
    retry_for_s: float = 10.0
    draining: bool = False
    dropped: bool = False  # DropProxy was applied: every session is already disconnected
    sessions: dict[str, Session] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def connect_command(self, client_id: str) -> sm.Connect:
        """Connect that also renews the lease: the proxy renews only while it has connections,
        so the first one after an idle spell is covered from its first command."""
        return sm.Connect(client_id, self.proxy_id, self.lease_ms)

    def new_client_id(self) -> str:
        return f"{self.proxy_id}-{next(self._numbers)}"

    def deliver(self, wakeup: r.Wakeup) -> None:
        """The ``JobQueue.subscribe`` handler: route a wake-up to its session."""
        session = self.sessions.get(wakeup.client_id)
        if session is not None:
            session.deliver(wakeup)


class Session:
    def __init__(self, ctx: ProxyContext, client_id: str) -> None:
        self.ctx = ctx
        self.client_id = client_id
        self.tube = "default"
        self.watched = ["default"]
        self._requests = itertools.count(1)
        self._pending: tuple[str, asyncio.Future[object]] | None = None
        self._unsettled: str | None = None  # a reserve's id whose outcome never came back
        self._abandoned: set[str] = set()  # reserves given up as lost in a wake-up gap
        self._stashed: list[r.Reserved | r.TimedOut | r.DeadlineSoon] = []  # for the next reserve
        self._half_closed = False
        self._peer_gone = False
        self._loop_cache: asyncio.AbstractEventLoop | None = None

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: on Linux every ``asyncio.get_running_loop()``
        is a getpid system call (CPython checks for a fork), and a put made three of them."""
        loop = self._loop_cache
        if loop is None:
            loop = self._loop_cache = asyncio.get_running_loop()
        return loop

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self.ctx.sessions[self.client_id] = self
        await self._apply_retrying(self.ctx.connect_command(self.client_id))

    async def close(self) -> None:
        """Disconnect: the machine releases this client's jobs and cancels its wait."""
        self.ctx.sessions.pop(self.client_id, None)
        if self.ctx.dropped:
            return
        try:
            await self._apply_retrying(sm.Disconnect(self.client_id))
        except QueueUnavailable:
            # The lease will run out instead; the jobs come back then.
            log.warning("disconnect_failed", client_id=self.client_id)

    def peer_gone(self, half_closed: bool) -> None:
        """The peer shut down its side (half_closed) or the connection is gone."""
        self._half_closed = half_closed
        self._peer_gone = True
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_result(_PEER_GONE)

    def deliver(self, wakeup: r.Wakeup) -> None:
        if isinstance(wakeup.result, r.StopRequested):
            return  # addressed to a worker's id, never to a proxy's: not a reserve's answer
        pending = self._pending
        if pending is not None and pending[0] == wakeup.request_id and not pending[1].done():
            pending[1].set_result(wakeup.result)
        elif wakeup.request_id == self._unsettled or (
            wakeup.request_id in self._abandoned and isinstance(wakeup.result, r.Reserved)
        ):
            # Nobody waits for this answer now; a job it reserved to us goes to the client's
            # next reserve rather than sitting unused until its TTR.
            self._stashed.append(wakeup.result)

    # --- events -----------------------------------------------------------------------------

    async def handle(self, event: e.Event) -> bytes:
        """The reply bytes for one event (b"" when nothing is to be sent)."""
        try:
            return await self._handle(event)
        except QueueUnavailable:
            log.error("queue_unavailable", client_id=self.client_id, command=type(event).__name__)
            return render.INTERNAL_ERROR
        except (ValueError, PermissionError) as error:
            # The queue refused the command itself (a codec limit, a missing permission):
            # this client gets beanstalkd's server-error reply and keeps its connection.
            log.error("command_refused", client_id=self.client_id, error=str(error))
            return render.INTERNAL_ERROR

    async def _handle(self, event: e.Event) -> bytes:
        match event:
            case e.ProtocolError(reply=line):
                return line
            case e.RejectedPut(reply=line, producer=producer):
                await self._apply(sm.RejectedPut(self.client_id, producer))
                return line
            case e.Put():
                return await self._put(event)
            case e.Reserve():
                return await self._reserve(event)
            case e.Stats():
                stats = await self._apply(sm.Stats())
                if isinstance(stats, r.ServerStats):
                    return render.server_stats(stats, self.ctx.process_stats())
                return render.render(event, stats)
            case e.Quit():
                return b""
        command = self._command(event)
        reply = await self._apply(command)
        self._mirror(event, reply)
        return render.render(event, reply)

    def _command(self, event: e.Command) -> sm.Command:
        c = self.client_id
        match event:
            case e.Use(tube=tube):
                return sm.Use(c, tube)
            case e.Watch(tube=tube):
                return sm.Watch(c, tube)
            case e.Ignore(tube=tube):
                return sm.Ignore(c, tube)
            case e.ReserveJob(job_id=job_id):
                return sm.ReserveJob(c, job_id)
            case e.Delete(job_id=job_id):
                return sm.Delete(c, job_id)
            case e.Release(job_id=job_id, priority=pri, delay_s=delay_s):
                return sm.Release(c, job_id, pri, delay_s * 1000)
            case e.Bury(job_id=job_id, priority=pri):
                return sm.Bury(c, job_id, pri)
            case e.Touch(job_id=job_id):
                return sm.Touch(c, job_id)
            case e.Peek(job_id=job_id):
                return sm.Peek(job_id)
            case e.PeekReady():
                return sm.PeekReady(self.tube)
            case e.PeekDelayed():
                return sm.PeekDelayed(self.tube)
            case e.PeekBuried():
                return sm.PeekBuried(self.tube)
            case e.Kick(bound=bound):
                return sm.Kick(self.tube, bound)
            case e.KickJob(job_id=job_id):
                return sm.KickJob(job_id)
            case e.StatsJob(job_id=job_id):
                return sm.StatsJob(job_id)
            case e.StatsTube(tube=tube):
                return sm.StatsTube(tube)
            case e.ListTubes():
                return sm.ListTubes()
            case e.ListTubeUsed():
                return sm.ListTubeUsed(c)
            case e.ListTubesWatched():
                return sm.ListTubesWatched(c)
            case e.PauseTube(tube=tube, delay_s=delay_s):
                return sm.PauseTube(tube, delay_s * 1000)
        raise AssertionError(f"no command for {event!r}")

    def _mirror(self, event: e.Command, reply: r.Reply) -> None:
        """Keep the proxy's copy of the used tube and watch list in step with the machine."""
        if isinstance(event, e.Use) and isinstance(reply, r.Using):
            self.tube = event.tube
        elif isinstance(event, e.Watch) and isinstance(reply, r.Watching):
            if event.tube not in self.watched:
                self.watched.append(event.tube)
        elif (
            isinstance(event, e.Ignore)
            and isinstance(reply, r.Watching)
            and event.tube in self.watched
        ):
            self.watched.remove(event.tube)

    async def _put(self, event: e.Put) -> bytes:
        if self.ctx.draining:
            await self._apply(sm.RejectedPut(self.client_id))
            return render.DRAINING
        command = sm.Put(
            tube=self.tube,
            priority=event.priority,
            delay_ms=event.delay_s * 1000,
            ttr_ms=event.ttr_s * 1000,
            body=event.body,
            client_id=self.client_id,
            request_id=self._request_id(),
        )
        return render.render(event, await self._apply(command))

    async def _reserve(self, event: e.Reserve) -> bytes:
        # A reserve whose outcome we never learned (the queue stayed unavailable) may be
        # waiting in the machine, or may even have been answered: ask again under its id, so
        # the machine gives the remembered reply instead of AlreadyWaiting, and take an answer
        # that arrived meanwhile.
        if self._stashed:
            self._unsettled = None
            return render.render(event, self._stashed.pop(0))
        loop = self._loop()
        ends_at = None if event.timeout_s is None else loop.time() + event.timeout_s
        timeout_ms = None if event.timeout_s is None else event.timeout_s * 1000
        request_id = self._unsettled or self._request_id()
        while True:
            command = sm.Reserve(self.client_id, timeout_ms, request_id, event.with_timeout)
            outcome = await self._reserve_once(command, ends_at)
            if outcome is not _LOST:
                break
            # The machine no longer waits for this reserve, yet its answer never came (lost in
            # a gap of the wake-up stream, or the wait was dropped with a lapsed lease). Ask
            # again for the time that is left; a job a lost answer gave this client comes back
            # to ready at its TTR, or goes to this client's next reserve if the answer turns up.
            log.warning("wakeup_lost_reserving_again", client_id=self.client_id)
            if ends_at is not None:
                timeout_ms = max(0, int((ends_at - loop.time()) * 1000))
            self._abandoned.add(request_id)
            request_id = self._request_id()
        if outcome is _PEER_GONE:
            return render.TIMED_OUT if self._half_closed else b""
        assert isinstance(outcome, r.Reply)
        return render.render(event, outcome)

    async def _reserve_once(self, command: sm.Reserve, ends_at: float | None) -> object:
        """The reply, or the wake-up that answered the wait, or _PEER_GONE / _LOST."""
        loop = self._loop()
        waiter: asyncio.Future[object] = loop.create_future()
        self._pending = (command.request_id, waiter)
        try:
            try:
                if ends_at is None:
                    reply = await self._apply(command)
                else:  # the cluster may be down: answer by the bound all the same
                    # asyncio.timeout, not wait_for: no task of its own per reserve.
                    async with asyncio.timeout_at(ends_at + RESERVE_GRACE_S + CHECK_S):
                        reply = await self._apply(command)
            except TimeoutError:
                log.warning("reserve_unanswered_timing_out", client_id=self.client_id)
                self._unsettled = command.request_id
                return r.TimedOut()
            except QueueUnavailable:
                self._unsettled = command.request_id
                raise
            self._unsettled = None
            if not isinstance(reply, r.Waiting):
                return reply
            if self._peer_gone and not waiter.done():
                # A reserve pipelined before the peer shut down: nobody can wait for it.
                waiter.set_result(_PEER_GONE)
            if ends_at is None:
                return await waiter
            return await self._answer_by(waiter, ends_at + RESERVE_GRACE_S, command.request_id)
        finally:
            self._pending = None

    async def _answer_by(
        self, waiter: asyncio.Future[object], check_at: float, request_id: str
    ) -> object:
        """The wait's answer; past ``check_at`` what the machine says about the wait."""
        loop = self._loop()
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), check_at - loop.time())
            except TimeoutError:
                pass
            waiting = await self._machine_waits()
            if waiting is False:
                return _LOST
            if waiting is None:  # no answer from the cluster: do not keep the client hanging
                log.warning("reserve_unanswered_timing_out", client_id=self.client_id)
                self._unsettled = request_id
                return r.TimedOut()
            check_at = loop.time() + 1.0  # the machine still waits (its clock is behind)

    async def _machine_waits(self) -> bool | None:
        """Whether the machine has this client waiting; None when it does not say in time."""
        command = sm.CheckClients(self.ctx.proxy_id, (self.client_id,))
        try:
            states = await asyncio.wait_for(self.ctx.queue.apply(command), CHECK_S)
        except (TimeoutError, QueueUnavailable):
            return None
        if not isinstance(states, r.ClientStates):
            return None
        return self.client_id in states.waiting

    @property
    def waiting(self) -> bool:
        """A reserve of this session is waiting for its wake-up."""
        return self._pending is not None and not self._pending[1].done()

    def wakeup_lost(self) -> None:
        """The machine no longer has this session waiting, yet no wake-up came: it was lost."""
        if self.waiting:
            assert self._pending is not None
            self._pending[1].set_result(_LOST)

    def _request_id(self) -> str:
        return f"{self.client_id}-{next(self._requests)}"

    # --- applying ---------------------------------------------------------------------------

    async def _apply(self, command: sm.Command) -> r.Reply:
        reply = await self._apply_retrying(command)
        if isinstance(reply, r.UnknownClient):
            log.warning("session_dropped_reconnecting", client_id=self.client_id)
            await self._reconnect()
            reply = await self._apply_retrying(self._renumbered(command))
        return reply

    def _renumbered(self, command: sm.Command) -> sm.Command:
        """The command under a new request id. A cluster remembers every outcome by request id
        (``cluster/replicated.py``), the UnknownClient reply included, so a retry under the old
        id would get it again; that reply also proves the old id changed nothing, so the new
        one cannot apply it twice."""
        if not isinstance(command, sm.Put | sm.Reserve) or not command.request_id:
            return command
        old_id, new_id = command.request_id, self._request_id()
        if self._pending is not None and self._pending[0] == old_id:
            self._pending = (new_id, self._pending[1])
        return dataclasses.replace(command, request_id=new_id)

    async def _reconnect(self) -> None:
        """Rebuild this session in the machine: connect, then the use and watch state."""
        c = self.client_id
        await self._apply_retrying(self.ctx.connect_command(c))
        if self.tube != "default":
            await self._apply_retrying(sm.Use(c, self.tube))
        for tube in self.watched:
            await self._apply_retrying(sm.Watch(c, tube))
        if "default" not in self.watched:
            await self._apply_retrying(sm.Ignore(c, "default"))

    async def _apply_retrying(self, command: sm.Command) -> r.Reply:
        loop = self._loop()
        give_up_at = loop.time() + self.ctx.retry_for_s
        backoff_s = _BACKOFF_FIRST_S
        while True:
            try:
                return await self.ctx.queue.apply(command)
            except QueueUnavailable:
                if loop.time() + backoff_s > give_up_at:
                    raise
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
