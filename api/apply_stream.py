"""``ApplyStream``: one long-lived ``JobStateMachine.ApplyStream`` RPC to one node, with many
batched calls in flight on it. Used by the proxy's ``RemoteQueue`` (``api/client.py``) and by
a follower forwarding its own listener's commands to the leader (``cluster/forwarder.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc

from api import jsm_pb2, jsm_pb2_grpc
from api.metadata import LEADER_HINT_KEY
from jobqueue.errors import QueueError

STATUS = {status.value[0]: status for status in grpc.StatusCode}
UNKNOWN_OUTCOME = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CallFailed(QueueError):
    """One call failed with a gRPC status: its own (an ApplyStream answer) or its stream's.
    UNAVAILABLE and DEADLINE_EXCEEDED leave the outcome unknown (retry with the same request
    ids); any other status is the node's final answer."""

    def __init__(self, code: grpc.StatusCode, details: str, leader_hint: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.leader_hint = leader_hint
        self.retryable = self.maybe_applied = code in UNKNOWN_OUTCOME

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> CallFailed:
        hint = dict(error.trailing_metadata() or ()).get(LEADER_HINT_KEY, "")
        return cls(error.code(), error.details() or "", str(hint))


class ApplyStream:
    """One long-lived ``ApplyStream`` RPC to one node, many calls in flight, each matched to
    its answer by call id. A unary call costs a new HTTP/2 stream, its headers and trailers,
    and several trips through the event loop on both sides; a message on an open stream costs
    one frame, less than half a unary call's round trip on this machine.

    Once the RPC ends (node gone, stream refused) or a call goes unanswered for its timeout
    (a paused node), the stream is ``broken``: every call still waiting fails with a retryable
    status and the queue opens a new stream for the next call."""

    def __init__(self, stub: jsm_pb2_grpc.JobStateMachineStub) -> None:
        self._rpc: Any = stub.ApplyStream()
        self._waiting: dict[int, asyncio.Future[jsm_pb2.ApplyStreamResponse]] = {}
        self._call_ids = itertools.count(1)
        self._writing = asyncio.Lock()  # gRPC allows one write at a time on a stream
        self._started = False  # a first write went through: the stream is connected
        self.broken = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def call(
        self, batch: list[jsm_pb2.ApplyRequest], timeout_s: float
    ) -> jsm_pb2.ApplyStreamResponse:
        call_id = next(self._call_ids)
        answer: asyncio.Future[jsm_pb2.ApplyStreamResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[call_id] = answer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            try:
                await self._write(
                    jsm_pb2.ApplyStreamRequest(call_id=call_id, batch=batch), timeout_s
                )
            except TimeoutError:
                self._fail(CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "stream did not start"))
                raise CallFailed(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the node did not take the call within {timeout_s:.0f} s",
                ) from None
            except grpc.aio.AioRpcError as exc:
                raise _stream_failure(exc) from None
            except Exception as exc:  # the RPC already ended: its reader saw why
                raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"stream closed ({exc})") from None
            # A timer rather than asyncio.wait_for, whose extra future costs a task switch.
            expire = loop.call_later(max(0.0, deadline - loop.time()), self._expire, answer)
            try:
                return await answer
            finally:
                expire.cancel()
        finally:
            self._waiting.pop(call_id, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # retrieved: a failure is already raised another way

    async def _write(self, request: jsm_pb2.ApplyStreamRequest, timeout_s: float) -> None:
        async with self._writing:
            if self._started:
                await self._rpc.write(request)
                return
            # The first write waits for the connection: bounded, or a node that accepts TCP
            # but never answers (paused) holds it for gRPC's connect timeout of 20 s. Later
            # writes go out at once; the answer timer covers them.
            await asyncio.wait_for(self._rpc.write(request), timeout_s)
            self._started = True

    def _expire(self, answer: asyncio.Future[jsm_pb2.ApplyStreamResponse]) -> None:
        # No answer in time: the node may be paused or cut off. Fail this call (retryable)
        # and drop the stream, so the next call opens a fresh one instead of waiting on it.
        if not answer.done():
            answer.set_exception(
                CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time from the node")
            )
        self._fail(CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "stream dropped after a timeout"))

    async def _read(self) -> None:
        error: Exception = CallFailed(grpc.StatusCode.UNAVAILABLE, "the node ended the stream")
        try:
            while True:
                response = await self._rpc.read()
                if response is grpc.aio.EOF:
                    break
                answer = self._waiting.get(response.call_id)
                if answer is not None and not answer.done():
                    answer.set_result(response)
        except asyncio.CancelledError:
            error = CallFailed(grpc.StatusCode.CANCELLED, "stream closed")
        except grpc.aio.AioRpcError as exc:
            error = _stream_failure(exc)
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        self.broken = True
        self._rpc.cancel()
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(error)
        self._waiting.clear()

    def abandon(self, why: str) -> None:
        """Give up on the node: every call still waiting fails as UNAVAILABLE (its outcome
        unknown, retryable with the same request ids) with ``why``, and the stream is dropped,
        so an answer that comes late is never taken."""
        self._reader.cancel()
        self._fail(CallFailed(grpc.StatusCode.UNAVAILABLE, why))

    def close(self) -> None:
        self._reader.cancel()
        self._fail(CallFailed(grpc.StatusCode.CANCELLED, "queue closed"))


def _stream_failure(error: grpc.aio.AioRpcError) -> CallFailed:
    """A whole stream ended with ``error``. A node answers each call's own failure inside the
    stream, so a broken stream (the node killed, a connection reset: gRPC may say INTERNAL or
    UNKNOWN then) leaves its calls' outcomes unknown: retryable, with the same request ids.
    Only a refusal of the stream itself (credentials, role, a node without ApplyStream) is not."""
    failure = CallFailed.of(error)
    if failure.code in _REFUSALS:
        return failure
    return CallFailed(
        grpc.StatusCode.UNAVAILABLE,
        f"the stream to the node broke ({failure.code.name}: {failure.details}); the outcome "
        "is unknown: retrying with the same request ids",
        failure.leader_hint,
    )


_REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
