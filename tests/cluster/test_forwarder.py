"""``Forwarder`` against a real gRPC server on loopback that stands for a leader.

A stalled leader (paused, cut off) takes the calls a follower forwards and never answers. The
forwarder must not wait out its call timeout: once the follower no longer hears that leader the
calls fail at once as "outcome unknown" (retryable under the same request ids), and the next
forward opens a fresh stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from api import jsm_pb2, jsm_pb2_grpc
from cluster import forwarder as forwarder_module
from cluster.forwarder import Forwarded, Forwarder


class Leader(jsm_pb2_grpc.JobStateMachineServicer):
    """Answers each call with one result per command, or, while ``stalled``, takes calls and
    never answers them (a paused process whose socket still accepts)."""

    def __init__(self) -> None:
        self.stalled = False
        self.calls = 0

    async def ApplyStream(
        self,
        request_iterator: AsyncIterator[jsm_pb2.ApplyStreamRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[jsm_pb2.ApplyStreamResponse]:
        async for request in request_iterator:
            self.calls += 1
            if self.stalled:
                continue
            results = [jsm_pb2.ApplyResult(outcome=b"ok", applied_index=1) for _ in request.batch]
            yield jsm_pb2.ApplyStreamResponse(call_id=request.call_id, results=results)


@pytest.fixture
async def leader() -> AsyncIterator[tuple[Leader, str]]:
    servicer = Leader()
    server = grpc.aio.server()
    jsm_pb2_grpc.add_JobStateMachineServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")  # bound here: no pick-then-bind race
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _request(n: int) -> jsm_pb2.ApplyRequest:
    return jsm_pb2.ApplyRequest(command=b"c%d" % n, request_id=f"r{n}")


async def test_a_forward_to_a_leader_this_node_stops_hearing_fails_at_once_as_retryable(
    leader: tuple[Leader, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The call timeout is made far longer than the test may take: only the watch can end it.
    monkeypatch.setattr(forwarder_module, "CALL_TIMEOUT_S", 600.0)
    servicer, address = leader
    heard = {address: True}
    channels: dict[str, grpc.aio.Channel] = {}

    def channel_for(target: str) -> grpc.aio.Channel:
        return channels.setdefault(target, grpc.aio.insecure_channel(target))

    forwarder = Forwarder(channel_for, lambda target: heard[target])
    try:
        assert [r.outcome for r in await forwarder.forward(address, [_request(1)])] == [b"ok"]
        servicer.stalled = True
        stuck = asyncio.ensure_future(forwarder.forward(address, [_request(2), _request(3)]))
        await asyncio.sleep(0.3)  # the leader has the call and says nothing
        assert not stuck.done()
        heard[address] = False  # this node's Raft no longer hears it
        with pytest.raises(Forwarded) as failure:
            await asyncio.wait_for(stuck, 10)
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE
        assert failure.value.retryable and failure.value.maybe_applied
        assert "no longer hears the leader" in str(failure.value)
        # Heard again (it resumed, or the caller found it again): a fresh stream serves.
        servicer.stalled, heard[address] = False, True
        assert [r.outcome for r in await forwarder.forward(address, [_request(2)])] == [b"ok"]
    finally:
        await forwarder.close()
        for channel in channels.values():
            await channel.close()


async def test_forwards_to_a_leader_still_heard_are_not_abandoned_while_it_works(
    leader: tuple[Leader, str],
) -> None:
    _, address = leader
    channel = grpc.aio.insecure_channel(address)
    forwarder = Forwarder(lambda target: channel, lambda target: True)
    try:
        results = await asyncio.gather(
            *(forwarder.forward(address, [_request(n)]) for n in range(200))
        )
        assert all(result[0].outcome == b"ok" for result in results)
    finally:
        await forwarder.close()
        await channel.close()
