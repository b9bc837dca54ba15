"""The asyncio beanstalkd server: a thin layer of sockets over the codec and the sessions.

Theory of operation: one ``asyncio.Protocol`` per connection feeds received bytes to its
``BeanstalkConnection`` (proxy/protocol.py); one task per connection pulls events and hands
each to its ``Session`` (proxy/session.py), writing the reply before taking the next event, so
pipelined commands are answered in order. A connection costs a few KiB while idle, so
thousands are fine.

Backpressure, per connection: when a client stops reading, its transport's write buffer passes
the high-water mark, ``pause_writing`` is called and that connection's task stops taking
commands until the buffer drains; when a client sends faster than we answer, reading from it is
paused once its unparsed bytes pass ``READ_BUFFER_MAX``. Neither ever blocks another connection.

``ProxyServer`` owns the proxy's identity (``proxy_id``, made once per process), renews the
proxy's lease every quarter of ``lease_ms`` while it has connections, routes wake-ups from
``JobQueue.subscribe`` to sessions, and on a clean stop sends ``DropProxy`` so the machine
releases every client at once. If no renewal got through for a whole lease (the cluster was
down or paused), the machine may have dropped this proxy's clients and ended their waits
without a wake-up: the proxy then asks which of its waiting sessions the machine still has
waiting, and the others reserve again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import time
import uuid
from typing import Final

import structlog

from jobqueue.interface import JobQueue, QueueUnavailable
from proxy import events as e
from proxy import render
from proxy.metrics import ProxyMetrics, verb_of
from proxy.protocol import JOB_SIZE_DEFAULT, BeanstalkConnection
from proxy.session import ProxyContext, Session
from statemachine import commands as sm
from statemachine import replies as r

log = structlog.get_logger(__name__)

# beanstalkd's own shape: clients parse it as a version (fivebeans threw on "1.12-beanraft").
# beanraft names itself in its logs and its docs, not in the protocol.
VERSION: Final = "1.12"
READ_BUFFER_MAX: Final = 1 << 20
WRITE_HIGH_WATER: Final = 256 * 1024
# Longer than a renewal can take when a node stalls (a call timeout of 2 s, then an election
# and a retry elsewhere): a proxy that is alive never loses its lease (ARCHITECTURE.md,
# "Liveness"). A proxy that dies frees its clients' jobs after this long.
LEASE_MS_DEFAULT: Final = 10_000
RENEWALS_PER_LEASE: Final = 4


class _Connection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._codec = BeanstalkConnection(server.max_job_size)
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        # Set by whoever brings news (bytes, EOF, loss) while the task waits for data: a bare
        # future rather than an asyncio.Event, whose wait() costs a coroutine per command.
        self._data_waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set once connected
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._lost = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()  # once: each lookup is a getpid system call
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ctx = self._server.ctx
        self._session = Session(ctx, ctx.new_client_id())
        self._server.track(self._loop.create_task(self._run()))

    def data_received(self, data: bytes) -> None:
        self._codec.receive_data(data)
        self._wake()
        if self._codec.buffered_bytes > READ_BUFFER_MAX and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        if self._session is not None:
            self._session.peer_gone(half_closed=True)
        return True  # keep the write side open: a waiting reserve still gets TIMED_OUT

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()
        self._writable.set()
        if self._session is not None:
            self._session.peer_gone(half_closed=False)

    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def _next_event(self) -> e.Event | None:
        """The next event, waiting for bytes as needed; None when the peer is done."""
        while True:
            event = self._codec.next_event()
            if not isinstance(event, e.NeedData):
                return event
            if self._eof or self._lost:
                return None
            if self._reading_paused and self._transport is not None:
                self._reading_paused = False
                self._transport.resume_reading()
            assert self._loop is not None  # connected before the task starts
            self._data_waiter = self._loop.create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None

    async def _run(self) -> None:
        session, transport = self._session, self._transport
        assert session is not None and transport is not None
        metrics = self._server.metrics
        if metrics is not None:
            metrics.connections.inc()
            metrics.connections_total.inc()
        try:
            await session.open()
            while not self._lost:
                event = await self._next_event()
                if event is None or isinstance(event, e.Quit):
                    break
                started = time.perf_counter()
                reply = await session.handle(event)
                if reply and not self._lost:
                    transport.write(reply)
                    if not self._writable.is_set():  # the client reads slower than we write
                        await self._writable.wait()
                if metrics is not None:
                    verb = verb_of(event)
                    metrics.commands.labels(verb=verb).inc()
                    metrics.latency.labels(verb=verb).observe(time.perf_counter() - started)
                    if reply.startswith(b"INTERNAL_ERROR"):
                        metrics.unavailable.inc()
        except QueueUnavailable:
            log.error("connect_failed_queue_unavailable", client_id=session.client_id)
        except Exception:
            log.exception("connection_failed", client_id=session.client_id)
        finally:
            if metrics is not None:
                metrics.connections.dec()
            transport.close()
            await session.close()


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT or unix:PATH, got {text!r}")
    return host or "127.0.0.1", int(port)


class ProxyServer:
    """The listening socket, the proxy's identity and lease, and its shared context."""

    def __init__(
        self,
        queue: JobQueue,
        max_job_size: int = JOB_SIZE_DEFAULT,
        lease_ms: int = LEASE_MS_DEFAULT,
        retry_for_s: float = 10.0,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.proxy_id = uuid.uuid4().hex
        self.metrics = metrics
        self.queue = queue
        self.max_job_size = max_job_size
        self.lease_ms = lease_ms
        self._started = time.monotonic()
        self.ctx = ProxyContext(
            proxy_id=self.proxy_id,
            queue=queue,
            process_stats=self.process_stats,
            lease_ms=lease_ms,
            retry_for_s=retry_for_s,
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._renewed_at = time.monotonic()  # when the last renewal that got through was sent

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drain(self) -> None:
        """SIGUSR1, as beanstalkd: from now on every put gets DRAINING."""
        log.info("draining", proxy_id=self.proxy_id)
        self.ctx.draining = True

    async def start(self, listen: str) -> str:
        """Renew the lease, subscribe to wake-ups, listen on ``HOST:PORT`` or ``unix:PATH``
        (as beanstalkd's ``-l``); return the bound address in the same form."""
        self.queue.subscribe(self.proxy_id, self.ctx.deliver)
        if hasattr(self.queue, "on_gap"):  # RemoteQueue: its wake-up stream can skip some
            self.queue.on_gap = self._on_gap
        await self._first_lease()
        loop = asyncio.get_running_loop()
        self._lease_task = loop.create_task(self._renew_forever())
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a stale socket file from a previous run
            self._server = await loop.create_unix_server(lambda: _Connection(self), path)
            bound = listen
        else:
            host, port = split_host_port(listen)
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, backlog=4096
            )
            address = self._server.sockets[0].getsockname()
            bound = f"{address[0]}:{address[1]}"
        log.info("proxy_listening", address=bound, proxy_id=self.proxy_id)
        return bound

    async def stop(self) -> None:
        """Stop listening, drop the proxy's clients in one command, close the queue."""
        if self._server is not None:
            self._server.close()
        if self._lease_task is not None:
            self._lease_task.cancel()
        try:
            await self.queue.apply(sm.DropProxy(self.proxy_id))
            self.ctx.dropped = True  # the sessions' own Disconnects are now redundant
        except Exception:
            log.warning("drop_proxy_failed", proxy_id=self.proxy_id, detail="the lease will do")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self.queue.close()

    def _on_gap(self, proxy_id: str) -> None:
        self.track(asyncio.get_running_loop().create_task(self.recover_lost_wakeups()))

    async def recover_lost_wakeups(self) -> None:
        """After a gap in the wake-up stream: every session the proxy thinks is waiting but
        the machine does not (answered in the gap, or dropped) asks again."""
        waiting = [s for s in self.ctx.sessions.values() if s.waiting]
        if not waiting:
            return
        ids = tuple(s.client_id for s in waiting)
        try:
            states = await self.queue.apply(sm.CheckClients(self.proxy_id, ids))
        except QueueUnavailable:
            log.error("wakeup_gap_unrecovered", proxy_id=self.proxy_id, clients=len(ids))
            return
        if not isinstance(states, r.ClientStates):
            return
        still_waiting = set(states.waiting)
        for session in waiting:
            if session.client_id not in still_waiting:
                session.wakeup_lost()

    async def _first_lease(self, wait_s: float = 120.0) -> None:
        """Serve only once the queue answers: a cluster may still be electing its leader."""
        give_up_at = time.monotonic() + wait_s
        while True:
            try:
                return await self._renew_lease()
            except QueueUnavailable:
                if time.monotonic() > give_up_at:
                    raise
                log.info("waiting_for_queue", proxy_id=self.proxy_id)
                await asyncio.sleep(0.25)

    async def _renew_lease(self) -> None:
        sent_at = time.monotonic()
        await self.queue.apply(sm.RenewLease(self.proxy_id, self.lease_ms))
        # The lease runs from when a renewal is applied, which is some time between its send
        # and its answer: a whole lease between the last send and this answer may be a lapse.
        lapsed = time.monotonic() - self._renewed_at > self.lease_ms / 1000
        self._renewed_at = sent_at
        if lapsed and self.ctx.sessions:
            log.warning("lease_may_have_lapsed_checking_sessions", proxy_id=self.proxy_id)
            self.track(asyncio.get_running_loop().create_task(self.recover_lost_wakeups()))

    async def _renew_forever(self) -> None:
        """Renew every quarter of the lease while there are connections. With none, the lease
        may lapse (nothing to free), so an idle cluster writes nothing; Connect renews it."""
        while True:
            await asyncio.sleep(self.lease_ms / 1000 / RENEWALS_PER_LEASE)
            if not self.ctx.sessions:
                self._renewed_at = time.monotonic()  # nothing to lose while there is nobody
                continue
            try:
                await self._renew_lease()
            except QueueUnavailable:
                log.warning("lease_renewal_failed", proxy_id=self.proxy_id)

    def process_stats(self) -> render.ProcessStats:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        uname = platform.uname()
        return render.ProcessStats(
            pid=os.getpid(),
            version=VERSION,
            rusage_utime_us=int(usage.ru_utime * 1_000_000),
            rusage_stime_us=int(usage.ru_stime * 1_000_000),
            uptime_s=int(time.monotonic() - self._started),
            draining=self.ctx.draining,
            id=self.proxy_id[:16],
            hostname=uname.node,
            os=uname.version,
            platform=uname.machine,
        )
