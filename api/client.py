"""The Python client of a beanraft cluster: ``RemoteQueue`` (a ``cluster.queue.JobQueue``).

Theory of operation. ``RemoteQueue`` talks to any node over gRPC. Each ``apply`` encodes the
command (``statemachine.codec``), gives it a request id (the command's own for Put and
Reserve, else a fresh one), and calls ``Apply``; on
UNAVAILABLE (no leader yet, a node down, an ambiguous outcome) it retries, on the leader the
error names if any, else on the next address, with the SAME request id, so the cluster answers a
retry of an applied command with its first outcome and nothing is applied twice.

Wake-ups: ``subscribe(proxy_id, handler)`` keeps one ``StreamWakeups`` stream open per proxy
id. Every node numbers wake-ups the same way (they are part of the replicated state), so when the
stream breaks (node killed, leader change) the client reopens it on another node from the last
number it saw and nothing is lost or delivered twice. The first ``apply`` waits until every
subscription is attached, so a reserve cannot be answered before its proxy is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog

from api import jsm_pb2, jsm_pb2_grpc
from cluster.queue import QueueUnavailable, WakeupHandler
from statemachine import codec
from statemachine.commands import Command
from statemachine.replies import Reply

log = structlog.get_logger(__name__)

LEADER_HINT_KEY = "leader-grpc-addr"
# Per call: a little over a node's own limits (4 s to commit, 4.5 s to forward), so a hung
# node (paused, partitioned) costs one short wait before the next node is tried.
CALL_TIMEOUT_S = 5.0
RETRY_FOR_S = 20.0
STREAM_SILENCE_S = 12.0  # nodes send a heartbeat every 5 s
# Few calls in flight, so that whatever queues meanwhile travels in one big batch: each call is
# one log entry (a follower fsync, a leader fsync, a Raft round), and that per-entry cost, not
# the per-command one, bounds throughput (bench/proxy_bench.py, 32 connections: 4 calls in
# flight ~2,850 puts/s, 2 ~3,650, 16 ~1,700). Two, not one, so a call stuck in a retry does not
# stall every other connection.
MAX_CALLS_IN_FLIGHT = 2
MAX_BATCH = 256


def open_channel(target: str, tls_dir: Path | None, name: str) -> grpc.aio.Channel:
    """A channel to one node: mTLS as ``name`` from ``tls_dir``, or plaintext when None."""
    options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
    if tls_dir is None:
        return grpc.aio.insecure_channel(target, options=options)
    from cluster.tls import channel_credentials

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
            command=codec.encode_command(command), request_id=_request_id(command)
        )
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._send_pending()
        return codec.decode_outcome(await future).reply

    def _send_pending(self) -> None:
        # Up to MAX_CALLS_IN_FLIGHT calls at once; whatever queues meanwhile goes in one
        # batched call (the leader puts it in one log entry). A lone apply goes out at once.
        loop = asyncio.get_running_loop()
        while self._pending and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            self._calls_in_flight += 1
            task = loop.create_task(self._send(batch))
            self._sends.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[tuple[jsm_pb2.ApplyRequest, asyncio.Future[bytes]]]) -> None:
        try:
            if len(batch) == 1:
                response = await self._call_with_retries(batch[0][0])
                results = [jsm_pb2.ApplyResult(outcome=response.outcome)]
            else:
                requests = [request for request, _ in batch]
                response = await self._call_with_retries(jsm_pb2.ApplyRequest(batch=requests))
                results = list(response.results)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    _settle(future, result)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._calls_in_flight -= 1
            self._send_pending()

    async def _call_with_retries(self, request: jsm_pb2.ApplyRequest) -> jsm_pb2.ApplyResponse:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RETRY_FOR_S
        candidates = self._candidates()
        target = next(candidates)
        backoff_s = 0.02
        last_error = ""
        while loop.time() < give_up:
            try:
                call = self._stub(target).Apply(request, timeout=CALL_TIMEOUT_S)
                response: jsm_pb2.ApplyResponse = await call
                # A follower forwarded the call: go straight to the leader next time.
                hint = dict(await call.trailing_metadata() or ()).get(LEADER_HINT_KEY)
                self._preferred = str(hint) if hint and hint in self._addresses else target
                return response
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(exc.details()) from None
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise PermissionError(f"{target}: {exc.details()}") from None
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise QueueUnavailable(f"{target}: {code.name}: {exc.details()}") from None
                last_error = f"{target}: {exc.details()}"
                hint = dict(exc.trailing_metadata() or ()).get(LEADER_HINT_KEY)
                target = str(hint) if hint else next(candidates)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 0.5)
        raise QueueUnavailable(
            f"no node applied the command within {RETRY_FOR_S:.0f} s (last: {last_error}); "
            "it may or may not have been applied"
        )

    def subscribe(self, proxy_id: str, handler: WakeupHandler) -> None:
        attached = asyncio.Event()
        self._attached.append(attached)
        task = asyncio.get_running_loop().create_task(self._follow(proxy_id, handler, attached))
        self._streams.append(task)

    async def _follow(self, proxy_id: str, handler: WakeupHandler, attached: asyncio.Event) -> None:
        last_seq = 0
        candidates = self._candidates()
        target = self._preferred
        while True:
            try:
                last_seq = await self._stream_once(target, proxy_id, last_seq, handler, attached)
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "silent"
                log.info("wake-up stream lost", node=target, after_seq=last_seq, reason=reason)
            target = next(candidates)
            await asyncio.sleep(0.05)

    async def _stream_once(
        self,
        target: str,
        proxy_id: str,
        last_seq: int,
        handler: WakeupHandler,
        attached: asyncio.Event,
    ) -> int:
        request = jsm_pb2.WakeupStreamRequest(proxy_id=proxy_id, after_seq=last_seq)
        call = self._stub(target).StreamWakeups(request)
        try:
            while True:
                event = await asyncio.wait_for(call.read(), STREAM_SILENCE_S)
                if event is grpc.aio.EOF:
                    return last_seq
                attached.set()
                if event.gap:
                    log.warning("wake-ups were lost to a gap", proxy_id=proxy_id, seq=event.seq)
                    self.on_gap(proxy_id)
                if event.seq > last_seq:
                    if event.wakeup:
                        handler(codec.decode_wakeup(event.wakeup))
                    last_seq = event.seq
        finally:
            call.cancel()

    async def close(self) -> None:
        for task in self._streams:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _settle(future: asyncio.Future[bytes], result: jsm_pb2.ApplyResult) -> None:
    if result.code == 0:
        future.set_result(result.outcome)
    elif result.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        future.set_exception(ValueError(result.message))
    else:
        future.set_exception(QueueUnavailable(f"code {result.code}: {result.message}"))


def _request_id(command: Command) -> str:
    """The idempotency key of one apply: the command's own request id when it has one (Put,
    Reserve), so that a caller that retries after QueueUnavailable is deduplicated too; else a
    fresh one, kept across this client's own retries."""
    own = getattr(command, "request_id", "")
    if own:
        return f"{type(command).__name__}:{own}"
    return uuid.uuid4().hex
