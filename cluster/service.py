"""The node's queue service: apply commands here if leading, else forward them to the leader.

Any node accepts any request. The leader proposes it (``RaftNode.submit``); a follower forwards
the encoded command, unchanged and with its request id, to the leader's ``Apply`` RPC, so the
leader's clock stamps every command and the leader batches it with everything else. During an
election the service waits up to ``LEADER_WAIT_S`` for a leader before answering UNAVAILABLE.

Reads are linearizable: every command, reads included (peek, stats, list), is a log entry, and
its reply is computed when the entry is applied, after every entry committed before it. A
deposed or partitioned leader cannot commit, so it cannot answer from stale state (pysyncobj has
no ReadIndex or lease read). Only ``Cluster.Status`` reads local state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from api import jsm_pb2
from api.apply_stream import STATUS
from cluster import envelope
from cluster.errors import Refused
from cluster.forwarder import Forwarded, Forwarder
from cluster.node import RaftNode
from statemachine import codec
from statemachine.commands import Command
from statemachine.replies import Outcome, Reply

LEADER_WAIT_S = 1.5
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


class QueueService:
    def __init__(self, node: RaftNode, tls_dir: Path | None) -> None:
        self.node = node
        self._tls_dir = tls_dir
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.forwarder = Forwarder(self.channel, self._hears)

    async def apply(self, command: Command, request_id: str = "") -> tuple[Outcome, int]:
        """Apply one command; return its outcome and the Raft index it was applied at."""
        reply, index = await self.apply_reply(command, request_id)
        return Outcome(reply), index

    async def apply_reply(self, command: Command, request_id: str = "") -> tuple[Reply, int]:
        """``apply`` with the reply as the machine made it (the node's own listener)."""
        return await self._apply_one(codec.encode_command(command), command, request_id)

    async def apply_encoded(self, command: bytes, request_id: str) -> tuple[bytes, int]:
        """``apply`` for a command that came encoded (gRPC ``Apply``): the outcome encoded."""
        decoded = codec.decode_command(command)  # refuse malformed input before replicating it
        reply, index = await self._apply_one(command, decoded, request_id)
        return codec.encode_outcome(Outcome(reply)), index

    async def _apply_one(
        self, command: bytes, decoded: Command, request_id: str
    ) -> tuple[Reply, int]:
        """``command`` both encoded (for the log) and decoded (the leader's proposer hands the
        decoded form to its own apply, sparing a decode). On the leader the reply comes as the
        machine made it: nothing is encoded for a caller in this process."""
        leader_grpc = await self._route()
        if not leader_grpc:
            request = envelope.Request(envelope.COMMAND, request_id, command, decoded)
            _, payload, index = (await self.node.submit([request]))[0]
            if isinstance(payload, bytes):  # REFUSED: why
                raise Refused(payload.decode(errors="replace"))
            return payload, index
        # Gathered with whatever else this follower forwards meanwhile (cluster.forwarder).
        message = jsm_pb2.ApplyRequest(command=command, request_id=request_id)
        (result,) = await self.forwarder.forward(leader_grpc, [message])
        if result.code == _INVALID:
            raise Refused(result.message)
        if result.code:
            raise Forwarded(STATUS[result.code], result.message)
        return codec.decode_outcome(result.outcome).reply, result.applied_index

    async def apply_batch(self, batch: list[jsm_pb2.ApplyRequest]) -> list[jsm_pb2.ApplyResult]:
        """Apply several commands in one log entry (when leading) or one forwarded call.

        A malformed command gets its own INVALID_ARGUMENT result; the others still apply."""
        results: list[jsm_pb2.ApplyResult | None] = [None] * len(batch)
        valid = []
        requests = []
        for i, item in enumerate(batch):
            try:
                decoded = codec.decode_command(item.command)
            except codec.CodecError as exc:
                results[i] = jsm_pb2.ApplyResult(code=_INVALID, message=str(exc))
                continue
            valid.append(i)
            requests.append(
                envelope.Request(envelope.COMMAND, item.request_id, item.command, decoded)
            )
        if valid:
            applied = await self._apply_valid([batch[i] for i in valid], requests)
            for i, result in zip(valid, applied, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def _apply_valid(
        self, batch: list[jsm_pb2.ApplyRequest], requests: list[envelope.Request]
    ) -> list[jsm_pb2.ApplyResult]:
        """``batch`` as received and as ``requests`` (decoded): forwarded as it came, or
        proposed with the commands already decoded."""
        leader_grpc = await self._route()
        if leader_grpc:
            return await self.forwarder.forward(leader_grpc, batch)
        results = []
        for _, payload, index in await self.node.submit(requests):
            if isinstance(payload, bytes):  # REFUSED: why
                results.append(jsm_pb2.ApplyResult(code=_INVALID, message=payload.decode()))
            else:
                outcome = codec.encode_outcome(Outcome(payload))
                results.append(jsm_pb2.ApplyResult(outcome=outcome, applied_index=index))
        return results

    async def _route(self) -> str:
        """The leader's gRPC address, or the empty string when this node leads. Waits out an
        election for up to LEADER_WAIT_S (a leader silent for an election timeout counts as none: a
        forward to it would hang); raises NotLeader when no leader is known by then,
        or at once on a leader that stepped down cut off from the others (its caller can
        reach the new leader sooner than this node can learn of it)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LEADER_WAIT_S
        while True:
            if self.node.is_leader():
                return ""
            _, leader_grpc = self.node.leader_info()
            if leader_grpc and self.node.hears_leader():
                return leader_grpc
            if loop.time() > give_up or self.node.syncobj.cut_off():
                raise self.node.not_leader()
            await asyncio.sleep(0.02)

    def _hears(self, leader_grpc: str) -> bool:
        """This node still hears the leader at ``leader_grpc``: a forward to it may be answered."""
        return self.node.hears_leader() and self.node.leader_info()[1] == leader_grpc

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel to another node (the leader) or a worker's log service, as this node.
        Keepalive pings: a peer that stops answering (paused, cut off) ends a long call with
        UNAVAILABLE within about 15 s instead of leaving it hanging."""
        channel = self._channels.get(target)
        if channel is None:
            if self._tls_dir is None:
                channel = grpc.aio.insecure_channel(target, options=KEEPALIVE_OPTIONS)
            else:
                from api.tls import channel_credentials

                credentials = channel_credentials(self._tls_dir, f"node-{self.node.config.node_id}")
                channel = grpc.aio.secure_channel(target, credentials, options=KEEPALIVE_OPTIONS)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        await self.forwarder.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
