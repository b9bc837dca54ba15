"""In-process clusters for adapter tests: N RaftNodes (real pysyncobj, real sockets on free
loopback ports, real journals in a temp dir) sharing one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from harness import async_wait_until, ports

from cluster import envelope
from cluster.clock import Clock, SystemClock
from cluster.node import NodeConfig, RaftNode
from statemachine import codec
from statemachine.commands import Command
from statemachine.replies import Outcome

SECRET = "test-cluster-secret-0123456789"


def free_ports(count: int) -> list[int]:
    """Ports held for this session (harness.ports: outside the ephemeral range, so no client
    connection can take one before the node binds it)."""
    return ports.allocate(count)


class InProcessCluster:
    def __init__(
        self, root: Path, size: int = 3, clock: Clock | None = None, fsync: str = "batch"
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.clock = clock or SystemClock()
        ports = free_ports(2 * size)
        self.raft_addrs = [f"127.0.0.1:{p}" for p in ports[:size]]
        self.grpc_addrs = [f"127.0.0.1:{p}" for p in ports[size:]]
        self.nodes: dict[int, RaftNode] = {}
        self.last_index = 0  # the Raft index of the last command applied through apply()

    def config(self, i: int) -> NodeConfig:
        return NodeConfig(
            node_id=str(i + 1),
            data_dir=self.root / f"node-{i + 1}",
            raft_addr=self.raft_addrs[i],
            grpc_addr=self.grpc_addrs[i],
            peers=[a for j, a in enumerate(self.raft_addrs) if j != i],
            secret=SECRET,
            clock=self.clock,
            fsync=self.fsync,
        )

    def start(self, i: int) -> RaftNode:
        node = RaftNode(self.config(i), asyncio.get_running_loop())
        node.start()
        self.nodes[i] = node
        return node

    async def start_all(self) -> None:
        for i in range(len(self.raft_addrs)):
            self.start(i)
        await self.wait_for_leader()

    async def stop(self, i: int) -> None:
        node = self.nodes.pop(i)
        await node.stop()

    async def stop_all(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)

    async def wait_for_leader(self, timeout_s: float = 15.0) -> RaftNode:

        def single_leader() -> RaftNode | None:
            leaders = [n for n in self.nodes.values() if n.is_leader()]
            if len(leaders) == 1 and leaders[0].state.members.get(leaders[0].config.raft_addr):
                return leaders[0]
            return None

        leader: RaftNode = await async_wait_until(single_leader, timeout_s, "a single leader")
        return leader

    async def apply(self, command: Command, request_id: str = "") -> Outcome:
        leader = await self.wait_for_leader()
        request = envelope.Request(envelope.COMMAND, request_id, codec.encode_command(command))
        ((_, reply, index),) = await leader.submit([request])
        self.last_index = index
        assert not isinstance(reply, bytes), f"refused: {reply!r}"
        return Outcome(reply)

    async def assert_converged(self, timeout_s: float = 15.0) -> bytes:
        """Every running replica reaches the same applied index and equal snapshots."""

        async def converged() -> tuple[bytes]:
            snaps = {i: await n.machine_snapshot() for i, n in self.nodes.items()}
            indexes = {index for _, index in snaps.values()}
            datas = {data for data, _ in snaps.values()}
            assert len(indexes) == 1 and len(datas) == 1, f"indexes {sorted(indexes)}"
            return (datas.pop(),)

        agreed = await async_wait_until(converged, timeout_s, "replicas to converge", poll_s=0.1)
        return agreed[0]


@contextlib.asynccontextmanager
async def running_cluster(root: Path, size: int = 3) -> AsyncIterator[InProcessCluster]:
    """A started cluster with a leader, stopped on the way out whatever happened."""
    cluster = InProcessCluster(root, size)
    await cluster.start_all()
    try:
        yield cluster
    finally:
        await cluster.stop_all()
