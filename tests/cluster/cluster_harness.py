"""In-process clusters for adapter tests: N RaftNodes (real pysyncobj, real sockets on free
loopback ports, real journals in a temp dir) sharing one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from cluster import envelope
from cluster.clock import Clock, SystemClock
from cluster.node import NodeConfig, RaftNode
from statemachine import codec
from statemachine.commands import Command
from statemachine.replies import Outcome

SECRET = "test-cluster-secret-0123456789"


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while loop.time() < give_up:
            leaders = [n for n in self.nodes.values() if n.is_leader()]
            if len(leaders) == 1 and leaders[0].state.members.get(leaders[0].config.raft_addr):
                return leaders[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout_s} s")

    async def apply(self, command: Command, request_id: str = "") -> Outcome:
        leader = await self.wait_for_leader()
        request = envelope.Request(envelope.COMMAND, request_id, codec.encode_command(command))
        ((_, payload, index),) = await leader.submit([request])
        self.last_index = index
        return codec.decode_outcome(payload)

    async def assert_converged(self, timeout_s: float = 15.0) -> bytes:
        """Every running replica reaches the same applied index and equal snapshots."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            snaps = {i: await n.machine_snapshot() for i, n in self.nodes.items()}
            indexes = {index for _, index in snaps.values()}
            datas = {data for data, _ in snaps.values()}
            if len(indexes) == 1 and len(datas) == 1:
                return datas.pop()
            if loop.time() > give_up:
                raise AssertionError(f"replicas did not converge: indexes {sorted(indexes)}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_cluster(root: Path, size: int = 3) -> AsyncIterator[InProcessCluster]:
    """A started cluster with a leader, stopped on the way out whatever happened."""
    cluster = InProcessCluster(root, size)
    await cluster.start_all()
    try:
        yield cluster
    finally:
        await cluster.stop_all()
