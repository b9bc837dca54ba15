"""``Forwarder``: a follower's commands for the leader, batched on one long-lived stream.

A follower's own beanstalkd listener (the direct path) forwards every command to the leader.
One unary ``Apply`` per command made every command its own log entry and cost the leader a
gRPC call each: a quarter of the leader's listener's rate at 32 connections (docs/benchmarks.md,
"a follower's listener, before and after"). So commands that arrive while calls are
out wait, and go together in the next call; at most ``MAX_CALLS_IN_FLIGHT`` calls are out, on
one ``ApplyStream`` per leader (``api.apply_stream``), and the leader proposes each call's
batch as one log entry. A lone command never waits: with no call out it goes at once.

A call that fails fails every command in it with the same error (``Forwarded``, whose code
says whether a retry with the same request id is safe); the caller retries, as ``NodeQueue``
does. A command the leader refused comes back as its own result, code INVALID_ARGUMENT.

A leader that stops answering (paused, cut off) would hold the calls out to it for
``CALL_TIMEOUT_S``. So while calls are out a watch asks ``hears(leader)`` every
``SILENCE_CHECK_S``; once this node no longer hears that leader (silent for the minimum
election timeout, or another was elected) its calls fail at once as "outcome unknown", and the
caller's retry, under the same request ids, goes to the new leader as soon as there is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from api import jsm_pb2, jsm_pb2_grpc
from api.apply_stream import STATUS, ApplyStream, CallFailed
from cluster.errors import ClusterError

UNKNOWN_OUTCOME = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
MAX_CALLS_IN_FLIGHT = 2  # as RemoteQueue: few calls out, so what queues meanwhile travels together
MAX_BATCH = 256
CALL_TIMEOUT_S = 4.5  # a little over the leader's own 4 s proposal timeout
SILENCE_CHECK_S = 0.05  # how often the watch asks whether the leader is still heard


@dataclass
class Forwarded(ClusterError):
    """The leader answered a forwarded request with an error status (or the call to it
    failed: UNAVAILABLE, outcome unknown): passed on unchanged."""

    code: grpc.StatusCode
    details: str
    leader_hint: str = ""

    def __post_init__(self) -> None:
        # A call that broke or timed out may have been applied; any other status is the
        # leader's answer, final.
        self.retryable = self.maybe_applied = self.code in UNKNOWN_OUTCOME

    def __str__(self) -> str:
        return self.details


_Waiting = tuple[jsm_pb2.ApplyRequest, "asyncio.Future[jsm_pb2.ApplyResult]"]


class Forwarder:
    """Batches forwarded commands per leader address; ``channel_for(address)`` gives the
    node's channel to it (mTLS as this node), ``hears(address)`` whether this node still hears
    that leader."""

    def __init__(
        self,
        channel_for: Callable[[str], grpc.aio.Channel],
        hears: Callable[[str], bool],
    ) -> None:
        self._channel_for = channel_for
        self._hears = hears
        self._streams: dict[str, ApplyStream] = {}
        self._pending: dict[str, list[_Waiting]] = {}
        self._in_flight: dict[str, int] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None

    async def forward(
        self, leader: str, requests: list[jsm_pb2.ApplyRequest]
    ) -> list[jsm_pb2.ApplyResult]:
        """Each request's result as the leader applied it (its own code says if it was
        refused), in order; raises ``Forwarded`` when a call carrying one failed. Requests
        given together travel together (a proxy's batch stays one log entry)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[jsm_pb2.ApplyResult]] = []
        pending = self._pending.setdefault(leader, [])
        for request in requests:
            futures.append(loop.create_future())
            pending.append((request, futures[-1]))
        self._send_pending(leader)
        return list(await asyncio.gather(*futures))

    def _send_pending(self, leader: str) -> None:
        pending = self._pending.get(leader)
        loop = asyncio.get_running_loop()
        while pending and self._in_flight.get(leader, 0) < MAX_CALLS_IN_FLIGHT:
            batch = pending[:MAX_BATCH]
            del pending[:MAX_BATCH]
            self._in_flight[leader] = self._in_flight.get(leader, 0) + 1
            task = loop.create_task(self._send(leader, batch))
            self._sends.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._sends.discard)
            if self._watch is None or self._watch.done():
                self._watch = loop.create_task(self._watch_leaders())

    async def _watch_leaders(self) -> None:
        """While calls are out, drop the stream to a leader this node no longer hears: its
        calls fail at once (retryable) instead of waiting out CALL_TIMEOUT_S."""
        while any(self._in_flight.values()):
            await asyncio.sleep(SILENCE_CHECK_S)
            for leader, calls in list(self._in_flight.items()):
                stream = self._streams.get(leader)
                if calls and stream is not None and not stream.broken and not self._hears(leader):
                    stream.abandon(
                        f"this node no longer hears the leader at {leader} (silent for an "
                        "election timeout, or another was elected); the outcome is unknown: "
                        "retry with the same request id"
                    )

    async def _send(self, leader: str, batch: list[_Waiting]) -> None:
        try:
            results = await self._call(leader, [request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight[leader] -= 1
            self._send_pending(leader)

    async def _call(
        self, leader: str, batch: list[jsm_pb2.ApplyRequest]
    ) -> list[jsm_pb2.ApplyResult]:
        try:
            response = await self._stream(leader).call(batch, CALL_TIMEOUT_S)
        except CallFailed as failure:
            raise _failed(leader, failure.code, failure.details, failure.leader_hint) from None
        if response.code:
            raise _failed(leader, STATUS[response.code], response.message, response.leader_hint)
        if len(response.results) != len(batch):
            raise Forwarded(
                grpc.StatusCode.INTERNAL,
                f"the leader at {leader} answered {len(response.results)} of {len(batch)} commands",
            )
        return list(response.results)

    def _stream(self, leader: str) -> ApplyStream:
        stream = self._streams.get(leader)
        if stream is None or stream.broken:
            stub = jsm_pb2_grpc.JobStateMachineStub(self._channel_for(leader))
            stream = self._streams[leader] = ApplyStream(stub)
        return stream

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        for task in list(self._sends):
            task.cancel()
        if self._watch is not None:
            self._watch.cancel()


def _failed(leader: str, code: grpc.StatusCode, details: str, hint: str) -> Forwarded:
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        code = grpc.StatusCode.UNAVAILABLE
    if code == grpc.StatusCode.UNAVAILABLE and "leader" not in details:
        details = (
            f"forwarding to the leader at {leader} failed ({details}); the outcome is "
            "unknown: retry with the same request id"
        )
    return Forwarded(code, details, hint)
