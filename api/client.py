"""The Python client of a beanraft cluster: ``RemoteQueue`` (a ``jobqueue.interface.JobQueue``).

Theory of operation. ``RemoteQueue`` talks to any node over gRPC. Each ``apply`` encodes the
command (``statemachine.codec``), gives it a request id (the command's own for Put and
Reserve, else a fresh one), and sends it as a call on the node's ``ApplyStream`` (one
long-lived stream per node, ``ApplyStream`` below); commands that queue while
``MAX_CALLS_IN_FLIGHT`` calls are out travel together in the next call (and while one call is
out, the next waits up to ``HOLD_S`` to fill). On UNAVAILABLE (no leader yet, a node down or
paused, an ambiguous outcome, a broken stream) it retries, on the leader the error names if
any, else on the next address, with the SAME request id, so the cluster answers a retry of an
applied command with its first outcome and nothing is applied twice.

Wake-ups: ``subscribe(proxy_id, handler)`` keeps one ``StreamWakeups`` stream open per proxy
id. Every node numbers wake-ups the same way (they are part of the replicated state), so when the
stream breaks (node killed, leader change) the client reopens it on another node from the last
number it saw and nothing is lost or delivered twice. The first ``apply`` waits until every
subscription is attached, so a reserve cannot be answered before its proxy is listening.

A stream can also stall without breaking: its node paused, or cut off from the leader while its
heartbeats still arrive. Each event carries the node's applied index, and the client knows the
index its own commands were applied at; a stream silent for ``STREAM_SILENCE_S``, or behind an
index this client saw applied ``STREAM_LAG_S`` ago, is dropped and reopened elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog

from api import jsm_pb2, jsm_pb2_grpc
from api.apply_stream import STATUS, ApplyStream, CallFailed
from jobqueue.errors import BeanraftError
from jobqueue.interface import QueueUnavailable, WakeupHandler, request_id_for
from statemachine import codec
from statemachine.commands import Command
from statemachine.replies import Reply

log = structlog.get_logger(__name__)

# Per call: a commit takes milliseconds, an election under a second; a node that has not
# answered in 1.5 s is paused or cut off, and the call is retried on the next one with the same
# request ids (a leader that only lost its quorum answers at once: raftcore rule 8). So a
# paused leader costs its clients about 1.5 s, and a stalled node never costs a lease (10 s;
# ARCHITECTURE.md, "Liveness").
CALL_TIMEOUT_S = 1.5
RETRY_FOR_S = 20.0
STREAM_SILENCE_S = 2.0  # nodes send a heartbeat every 0.5 s
STREAM_LAG_S = 1.5  # behind what this client saw applied for this long: the stream stalled
STREAM_CHECK_S = 0.25
# Few calls in flight, so that whatever queues meanwhile travels in one big batch: each call is
# one log entry (a follower fsync, a leader fsync, a Raft round), and that per-entry cost, not
# the per-command one, bounds throughput (bench/proxy_bench.py at 32 connections: 2 in flight
# beat 4, 8 and 16). Two, not one, so a call stuck in a retry does not stall every other
# connection.
MAX_CALLS_IN_FLIGHT = 2
MAX_BATCH = 256
# How long a free slot waits for more commands while another call is out and the last answer
# went to a crowd (see apply). At 32 connections 1 ms gave bigger calls and more puts a second
# than sending at once (bench/proxy_bench.py).
HOLD_S = 0.001


def open_channel(target: str, tls_dir: Path | None, name: str) -> grpc.aio.Channel:
    """A channel to one node: mTLS as ``name`` from ``tls_dir``, or plaintext when None."""
    options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
    if tls_dir is None:
        return grpc.aio.insecure_channel(target, options=options)
    from api.tls import channel_credentials

    return grpc.aio.secure_channel(target, channel_credentials(tls_dir, name), options=options)


class RemoteQueue:
    def __init__(self, addresses: list[str], tls_dir: Path | None, tls_name: str = "proxy") -> None:
        if not addresses:
            raise ValueError("RemoteQueue needs at least one node address")
        self._addresses = list(addresses)
        self._tls_dir = tls_dir
        self._tls_name = tls_name
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred = self._addresses[0]
        self._streams: list[asyncio.Task[None]] = []
        self._attached: list[asyncio.Event] = []
        self.on_gap: Callable[[str], None] = lambda proxy_id: None
        self._pending: list[tuple[jsm_pb2.ApplyRequest, asyncio.Future[bytes]]] = []
        self._calls_in_flight = 0
        self._sends: set[asyncio.Task[None]] = set()
        self._apply_streams: dict[str, ApplyStream] = {}
        self._hold: asyncio.TimerHandle | None = None  # a free slot held for a fuller batch
        self._crowded = False  # the last call answered more than one command (see apply)
        self.applied_index = 0  # the highest Raft index a command of this client applied at

    def _stub(self, address: str) -> jsm_pb2_grpc.JobStateMachineStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = open_channel(address, self._tls_dir, self._tls_name)
            self._channels[address] = channel
        return jsm_pb2_grpc.JobStateMachineStub(channel)

    def _candidates(self) -> itertools.cycle[str]:
        start = self._addresses.index(self._preferred) if self._preferred in self._addresses else 0
        return itertools.cycle(self._addresses[start:] + self._addresses[:start])

    async def apply(self, command: Command) -> Reply:
        """Apply ``command`` on the cluster and return its reply (see the module docstring)."""
        for attached in self._attached:
            if attached.is_set():
                continue
            try:
                await asyncio.wait_for(attached.wait(), RETRY_FOR_S)
            except TimeoutError:
                raise QueueUnavailable(
                    f"no node of {','.join(self._addresses)} opened the wake-up stream within "
                    f"{RETRY_FOR_S:.0f} s: is the cluster up and reachable?"
                ) from None
        request = jsm_pb2.ApplyRequest(
            command=codec.encode_command(command), request_id=request_id_for(command)
        )
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        # A crowd: the last answer released several callers at once. They come back one by
        # one over a few hundred microseconds; sent at once, the first of them would take the
        # free slot alone and the rest would wait a whole round trip behind it (32
        # connections: batches of 2 and 28 in turn). So while a call is out, a crowd's free
        # slot is held a moment to fill; callers that come one at a time never wait.
        at_once = self._calls_in_flight == 0 or not self._crowded
        if len(self._pending) == 1 and at_once and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            # Alone: send it from this task, one task switch fewer each way than handing it
            # to a sender task (a lone client's latency is those switches).
            await self._send(self._take_batch())
        elif at_once or len(self._pending) >= MAX_BATCH:
            self._send_pending()
        elif self._hold is None and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            self._hold = asyncio.get_running_loop().call_later(HOLD_S, self._send_pending)
        return codec.decode_outcome(await future).reply

    def _take_batch(self) -> list[tuple[jsm_pb2.ApplyRequest, asyncio.Future[bytes]]]:
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        self._calls_in_flight += 1
        return batch

    def _send_pending(self) -> None:
        # Up to MAX_CALLS_IN_FLIGHT calls at once; whatever queues meanwhile goes in one
        # batched call (the leader puts it in one log entry).
        loop = asyncio.get_running_loop()
        if self._hold is not None:
            self._hold.cancel()  # no-op when it is the hold's own call
            self._hold = None
        while self._pending and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            task = loop.create_task(self._send(self._take_batch()))
            self._sends.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[tuple[jsm_pb2.ApplyRequest, asyncio.Future[bytes]]]) -> None:
        try:
            results = await self._call_with_retries([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    _settle(future, result)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._calls_in_flight -= 1
            self._crowded = len(batch) > 1
            self._send_pending()

    async def _call_with_retries(
        self, batch: list[jsm_pb2.ApplyRequest]
    ) -> list[jsm_pb2.ApplyResult]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RETRY_FOR_S
        candidates = self._candidates()
        target = next(candidates)
        backoff_s = 0.02
        last_error = ""
        while loop.time() < give_up:
            try:
                response = await self._stream(target).call(batch, CALL_TIMEOUT_S)
                if response.code:
                    raise CallFailed(STATUS[response.code], response.message, response.leader_hint)
                # A follower forwarded the call: go straight to the leader next time.
                hint = response.leader_hint
                self._preferred = hint if hint and hint in self._addresses else target
                for result in response.results:
                    self.applied_index = max(self.applied_index, result.applied_index)
                return list(response.results)
            except CallFailed as failure:  # ApplyStream.call turns every failure into one
                code = failure.code
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(failure.details) from None
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise PermissionError(f"{target}: {failure.details}") from None
                if code not in _RETRYABLE:
                    raise QueueUnavailable(f"{target}: {code.name}: {failure.details}") from None
                last_error = f"{target}: {failure.details}"
                target = failure.leader_hint if failure.leader_hint else next(candidates)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 0.5)
        raise QueueUnavailable(
            f"no node applied the command within {RETRY_FOR_S:.0f} s (last: {last_error}); "
            "it may or may not have been applied"
        )

    def _stream(self, address: str) -> ApplyStream:
        stream = self._apply_streams.get(address)
        if stream is None or stream.broken:
            stream = ApplyStream(self._stub(address))
            self._apply_streams[address] = stream
        return stream

    def subscribe(self, proxy_id: str, handler: WakeupHandler) -> None:
        attached = asyncio.Event()
        self._attached.append(attached)
        task = asyncio.get_running_loop().create_task(self._follow(proxy_id, handler, attached))
        self._streams.append(task)

    async def _follow(self, proxy_id: str, handler: WakeupHandler, attached: asyncio.Event) -> None:
        cursor = _Cursor()  # survives every reconnect: the next stream resumes after it
        candidates = self._candidates()
        target = next(candidates)  # the preferred node first, then each other in turn
        while True:
            try:
                await self._stream_once(target, proxy_id, cursor, handler, attached)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the queue is closing
                log.info("wake-up stream cancelled", node=target, after_seq=cursor.seq)
            except (grpc.aio.AioRpcError, StreamStalled) as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.info("wake-up stream lost", node=target, after_seq=cursor.seq, reason=reason)
            except Exception:  # never let the follower die: every wait of the proxy needs it
                log.warning("wake-up stream failed", node=target, exc_info=True)
            target = next(candidates)
            await asyncio.sleep(0.05)

    async def _stream_once(
        self,
        target: str,
        proxy_id: str,
        cursor: _Cursor,
        handler: WakeupHandler,
        attached: asyncio.Event,
    ) -> None:
        request = jsm_pb2.WakeupStreamRequest(
            proxy_id=proxy_id, after_seq=cursor.seq, exact=cursor.known
        )
        call = self._stub(target).StreamWakeups(request)
        loop = asyncio.get_running_loop()
        watch = _StallWatch(loop.time())
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                # A read is never cancelled (that would cancel the whole call): it is waited
                # for in slices, and the stream is checked for a stall between them.
                reading = reading or asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({reading}, timeout=STREAM_CHECK_S)
                if not done:
                    watch.check(loop.time(), self.applied_index)
                    continue
                event, reading = reading.result(), None
                if event is grpc.aio.EOF:
                    return
                watch.heard(loop.time(), event.applied_index)
                watch.check(loop.time(), self.applied_index)
                attached.set()
                if event.gap:
                    log.warning("wake-ups were lost to a gap", proxy_id=proxy_id, seq=event.seq)
                    self.on_gap(proxy_id)
                if event.seq > cursor.seq:
                    if event.wakeup:
                        handler(codec.decode_wakeup(event.wakeup))
                    cursor.seq = event.seq
                cursor.known = True
        finally:
            call.cancel()
            if reading is not None:
                reading.cancel()

    async def close(self) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        for stream in self._apply_streams.values():
            stream.close()
        self._apply_streams.clear()
        for task in self._streams:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class StreamStalled(BeanraftError):
    """A wake-up stream that is open but no longer keeps up (see the module docstring)."""


class _Cursor:
    """The number of the last wake-up a proxy's stream delivered, once one stream attached
    (``known``): from then on every stream resumes exactly there, 0 included."""

    seq = 0
    known = False


class _StallWatch:
    """Watches one wake-up stream for silence and for lagging behind this client's commits."""

    def __init__(self, now: float) -> None:
        self._heard_at = now
        self._applied = 0  # the stream node's applied index, as its last event said
        self._lag_target = 0  # an index this client saw applied that the node had not...
        self._lag_since = 0.0  # ...since this time

    def heard(self, now: float, applied_index: int) -> None:
        self._heard_at = now
        self._applied = max(self._applied, applied_index)

    def check(self, now: float, client_applied: int) -> None:
        if now - self._heard_at > STREAM_SILENCE_S:
            raise StreamStalled(f"silent for {STREAM_SILENCE_S:.0f} s")
        if self._lag_target and self._applied >= self._lag_target:
            self._lag_target = 0
        if not self._lag_target and client_applied > self._applied:
            self._lag_target, self._lag_since = client_applied, now
        if self._lag_target and now - self._lag_since > STREAM_LAG_S:
            raise StreamStalled(
                f"the node has not applied index {self._lag_target} for {STREAM_LAG_S} s"
            )


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _settle(future: asyncio.Future[bytes], result: jsm_pb2.ApplyResult) -> None:
    if result.code == 0:
        future.set_result(result.outcome)
    elif result.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        future.set_exception(ValueError(result.message))
    else:
        future.set_exception(QueueUnavailable(f"code {result.code}: {result.message}"))
