"""The ``coolbeans.api.v1.Cluster`` servicer: membership, leadership, status and snapshots.

Join and Leave work on any node: a follower forwards them to the leader (coolbeans answered
FAILED_PRECONDITION and made the caller hunt). Leave of the leader itself first hands leadership
to a caught-up follower, then asks the new leader to remove the old one. ``Snapshot`` forces a
local log compaction (coolbeans' meaning); ``StreamSnapshot`` returns the machine's snapshot
bytes, taken between two applies so it is consistent under load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2
from cluster.forwarder import Forwarded
from cluster.grpc_jsm import AnyCtx, Ctx, guarded
from cluster.service import QueueService

log = structlog.get_logger(__name__)


def valid_addr(addr: str) -> bool:
    """HOST:PORT with a host and a port in 1..65535 ([v6]:PORT too)."""
    host, sep, port = addr.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)


CHUNK_BYTES = 1 << 20
# A forwarded Join or Leave may hand leadership over and wait for the leaving node to catch up.
MEMBERSHIP_TIMEOUT_S = 30.0


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    def __init__(self, service: QueueService) -> None:
        self.service = service
        self.node = service.node

    async def Join(
        self,
        request: cluster_pb2.JoinRequest,
        context: Ctx[cluster_pb2.JoinRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        if not request.node_id or not request.addr:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id and addr are required")
        for field, value in (("addr", request.addr), ("grpc_addr", request.grpc_addr)):
            if value and not valid_addr(value):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{field} {value!r} is not HOST:PORT (for example 127.0.0.1:7000)",
                )
        clash = self._clash(request.node_id, request.addr)
        if clash:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, clash)
        if not self.node.is_leader():
            await guarded(context, self._forward(context, "Join", request))
            return empty_pb2.Empty()
        log.info("join requested", node_id=request.node_id, raft_addr=request.addr)
        add = self.node.add_member(
            request.node_id, request.addr, request.grpc_addr, request.incarnation
        )
        await guarded(context, add)
        return empty_pb2.Empty()

    def _clash(self, node_id: str, raft_addr: str) -> str:
        """Why a join would make a second member of one id or one address, or ""."""
        members = dict(self.node.state.members)  # raft addr -> (node id, gRPC addr)
        members[self.node.config.raft_addr] = (self.node.config.node_id, self.node.config.grpc_addr)
        for addr, (member_id, _) in members.items():
            if member_id == node_id and addr != raft_addr:
                return (
                    f"node id {node_id} is already a member at {addr}: remove it first "
                    f"(`beanraft cluster leave --node-id {node_id}`) or choose another id"
                )
            if addr == raft_addr and member_id and member_id != node_id:
                return (
                    f"{raft_addr} is already the Raft address of member {member_id}: remove it "
                    f"first (`beanraft cluster leave --node-id {member_id}`) or use another"
                )
        return ""

    async def Leave(
        self,
        request: cluster_pb2.LeaveRequest,
        context: Ctx[cluster_pb2.LeaveRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        raft_addr = self._raft_addr_of(request.node_id)
        if not raft_addr:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no member with node id {request.node_id!r}: see `beanraft cluster status` "
                "(a member listed without an id can be named by its Raft address)",
            )
        log.info("leave requested", node_id=request.node_id, raft_addr=raft_addr)
        if self.node.is_leader() and raft_addr == self.node.config.raft_addr:
            await guarded(context, self.node.transfer_leadership())
        if not self.node.is_leader():
            await guarded(context, self._forward(context, "Leave", request))
            return empty_pb2.Empty()
        await guarded(context, self.node.remove_member(raft_addr))
        return empty_pb2.Empty()

    def _raft_addr_of(self, node_id: str) -> str:
        if node_id == self.node.config.node_id:
            return self.node.config.raft_addr
        for raft_addr, (member_id, _) in self.node.state.members.items():
            if member_id == node_id and raft_addr in self.node.member_addrs():
                return raft_addr
        # A member whose directory entry is gone (its removal was refused after the entry was
        # dropped) or was never recorded can still be named by its Raft address.
        return node_id if node_id in self.node.member_addrs() else ""

    async def _forward(self, context: AnyCtx, method: str, request: Message) -> None:
        _, leader_grpc = self.node.leader_info()
        if not leader_grpc:
            raise self.node.not_leader()
        stub = cluster_pb2_grpc.ClusterStub(self.service.channel(leader_grpc))
        try:
            await getattr(stub, method)(request, timeout=MEMBERSHIP_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise Forwarded(exc.code(), exc.details() or "", leader_grpc) from None

    async def IsNodeLeader(
        self,
        request: empty_pb2.Empty,
        context: Ctx[empty_pb2.Empty, cluster_pb2.IsNodeLeaderResponse],
    ) -> cluster_pb2.IsNodeLeaderResponse:
        return cluster_pb2.IsNodeLeaderResponse(is_leader=self.node.is_leader())

    async def Snapshot(
        self, request: empty_pb2.Empty, context: Ctx[empty_pb2.Empty, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        self.node.syncobj.forceLogCompaction()
        log.info("log compaction forced", node_id=self.node.config.node_id)
        return empty_pb2.Empty()

    async def StreamSnapshot(
        self,
        request: empty_pb2.Empty,
        context: Ctx[empty_pb2.Empty, cluster_pb2.SnapshotChunk],
    ) -> AsyncIterator[cluster_pb2.SnapshotChunk]:
        data, index = await guarded(context, self.node.machine_snapshot())
        log.info("snapshot streamed", applied_index=index, size_bytes=len(data))
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            chunk = cluster_pb2.SnapshotChunk(data=data[offset : offset + CHUNK_BYTES])
            if offset == 0:
                chunk.applied_index = index
                chunk.total_size = len(data)
            yield chunk

    async def Status(
        self, request: empty_pb2.Empty, context: Ctx[empty_pb2.Empty, cluster_pb2.ClusterStatus]
    ) -> cluster_pb2.ClusterStatus:
        async def status() -> dict[str, Any]:  # guarded: a failure is INTERNAL, and logged
            return self.node.syncobj.getStatus()  # type: ignore[no-any-return]

        raw = await guarded(context, status())
        return cluster_status(self.node, raw)


def cluster_status(node: Any, raw: dict[str, Any]) -> cluster_pb2.ClusterStatus:
    """Build the Status reply from pysyncobj's getStatus() and the member directory."""
    leader = raw.get("leader")
    leader_raft = leader.address if leader is not None else ""
    leader_id, leader_grpc = node.state.members.get(leader_raft, ("", ""))
    status = cluster_pb2.ClusterStatus(
        node_id=node.config.node_id,
        raft_addr=node.config.raft_addr,
        grpc_addr=node.config.grpc_addr,
        is_leader=raw.get("state") == 2,
        leader_node_id=leader_id,
        leader_raft_addr=leader_raft,
        leader_grpc_addr=leader_grpc,
        term=raw.get("raft_term", 0),
        commit_index=raw.get("commit_idx", 0),
        applied_index=raw.get("last_applied", 0),
        has_quorum=bool(raw.get("has_quorum")),
        ready=bool(node.syncobj.isReady()),
    )
    for raft_addr in node.member_addrs():
        member_id, grpc_addr = node.state.members.get(raft_addr, ("", ""))
        is_self = raft_addr == node.config.raft_addr
        match = raw.get(f"match_idx_server_{raft_addr}", -1)
        if is_self and status.is_leader:
            match = status.applied_index
        lag = max(0, status.commit_index - match) if status.is_leader and match >= 0 else -1
        status.members.append(
            cluster_pb2.MemberStatus(
                node_id=member_id or (node.config.node_id if is_self else ""),
                raft_addr=raft_addr,
                grpc_addr=grpc_addr or (node.config.grpc_addr if is_self else ""),
                connected=is_self or raw.get(f"partner_node_status_server_{raft_addr}") == 2,
                is_leader=raft_addr == leader_raft,
                match_index=match,
                lag=lag,
            )
        )
    return status
