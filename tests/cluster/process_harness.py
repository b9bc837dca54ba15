"""Multi-process clusters for fault tests: each node is ``python -m beanraft node`` on held
loopback ports (harness.ports), killed with SIGKILL, paused with SIGSTOP, restarted on the same
data dir; each run of a node is a harness.Process appending to the node's log."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from cluster_harness import SECRET, free_ports
from harness import Process, async_wait_until

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2
from api.client import RemoteQueue, open_channel

STARTUP_S = 30.0


def issue_test_certificates(directory: Path, nodes: int = 3) -> Path:
    """A CA in ``directory``, ``node-1``..``node-N``, and one client certificate per role named
    by its role (admin, viewer, proxy, worker, node): what an mTLS test cluster needs."""
    from api import tls

    tls.init_ca(directory)
    for node_id in range(1, nodes + 1):
        tls.issue_certificate(directory, "node", f"node-{node_id}")
    for role in tls.ROLES:
        tls.issue_certificate(directory, role, role)
    return directory


class Node:
    def __init__(self, root: Path, node_id: str, raft_addr: str, grpc_addr: str) -> None:
        self.node_id = node_id
        self.raft_addr = raft_addr
        self.grpc_addr = grpc_addr
        self.data_dir = root / f"node-{node_id}"
        self.log_path = root / f"node-{node_id}.log"
        self.proc: Process | None = None
        self.extra: list[str] = []

    def argv(self, peers: list[str], security: list[str], fsync: str) -> list[str]:
        argv = [sys.executable, "-m", "beanraft", "node", "--node-id", self.node_id]
        argv += ["--data-dir", str(self.data_dir), "--raft-addr", self.raft_addr]
        argv += ["--grpc-addr", self.grpc_addr, "--fsync", fsync, *security]
        if peers:
            argv += ["--peers", ",".join(peers)]
        return argv + self.extra

    def start(self, argv: list[str]) -> None:
        self._argv = argv
        self.proc = Process(argv, self.log_path, f"node-{self.node_id}")

    def restart(self) -> None:
        self.start(self._argv)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.pause()

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.resume()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.stop(grace_s=15)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running


class ProcessCluster:
    def __init__(
        self, root: Path, size: int = 3, tls_dir: Path | None = None, fsync: str = "batch"
    ) -> None:
        self.root = root
        self.tls_dir = tls_dir
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        (root / "secret").write_text(SECRET)
        self.nodes: list[Node] = []
        for _ in range(size):
            self.add_node_slot()

    def add_node_slot(self) -> Node:
        raft, grpc_port = free_ports(2)
        node_id = str(len(self.nodes) + 1)
        node = Node(self.root, node_id, f"127.0.0.1:{raft}", f"127.0.0.1:{grpc_port}")
        self.nodes.append(node)
        return node

    def security(self) -> list[str]:
        tls = ["--tls-dir", str(self.tls_dir)] if self.tls_dir else ["--insecure"]
        return [*tls, "--cluster-secret-file", str(self.root / "secret")]

    def start(self, node: Node, peers: list[Node] | None = None) -> None:
        others = [n.raft_addr for n in (peers or self.nodes) if n is not node]
        node.start(node.argv(others, self.security(), self.fsync))

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def queue(self, proxy: bool = True) -> RemoteQueue:
        return RemoteQueue([n.grpc_addr for n in self.nodes], self.tls_dir, "admin")

    def channel(self, node: Node) -> grpc.aio.Channel:
        return open_channel(node.grpc_addr, self.tls_dir, "admin")

    async def status(self, node: Node) -> cluster_pb2.ClusterStatus | None:
        async with self.channel(node) as channel:
            try:
                status: cluster_pb2.ClusterStatus = await cluster_pb2_grpc.ClusterStub(
                    channel
                ).Status(empty_pb2.Empty(), timeout=3)
                return status
            except grpc.aio.AioRpcError:
                return None

    async def wait_for_leader(self, timeout_s: float = STARTUP_S) -> Node:
        """The leader, once the cluster has settled: it is ready, knows every connected
        member's gRPC address, and every node that answers names it as the leader. (Right
        after a start a node may not have reached the leader yet; a request sent to it then
        is rightly refused with "retry shortly", which a test's single call does not do.)"""

        async def settled_leader() -> Node | None:
            statuses = [(node, await self.status(node)) for node in self.running()]
            answering = [(node, status) for node, status in statuses if status is not None]
            for node, status in answering:
                if not (status.is_leader and status.ready):
                    continue
                if not all(m.grpc_addr for m in status.members if m.connected):
                    continue
                if all(s.leader_grpc_addr == node.grpc_addr for _, s in answering):
                    return node
            return None

        leader: Node = await async_wait_until(
            settled_leader, timeout_s, f"a settled leader (logs in {self.root})", poll_s=0.1
        )
        return leader

    async def snapshot(self, node: Node) -> tuple[bytes, int]:
        async with self.channel(node) as channel:
            data = b""
            index = 0
            stub = cluster_pb2_grpc.ClusterStub(channel)
            async for chunk in stub.StreamSnapshot(empty_pb2.Empty(), timeout=30):
                data += chunk.data
                index = index or chunk.applied_index
            return data, index

    async def assert_converged(self, timeout_s: float = 30.0) -> bytes:
        """Every running replica reaches the same applied index and equal snapshots."""

        async def converged() -> tuple[bytes] | list[int]:
            try:
                snaps = [await self.snapshot(n) for n in self.running()]
            except grpc.aio.AioRpcError:  # a restarted node is not serving yet
                return []
            if len({s for s, _ in snaps}) == 1 and len({i for _, i in snaps}) == 1:
                return (snaps[0][0],)
            raise AssertionError(f"replicas differ (applied {[i for _, i in snaps]})")

        agreed = await async_wait_until(converged, timeout_s, "replicas to converge", poll_s=0.2)
        return bytes(agreed[0])
