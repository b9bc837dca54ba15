"""A cluster for the fault harness: nodes as their own users on their own small disks, behind
two proxies, with every fault the schedule can ask for."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness import Process, ports, wait_until

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2
from api.client import open_channel
from api.tls import init_ca, issue_certificate
from cluster.journal import _header_salt, scan

from .disk import SmallDisk
from .hosts import GROUP, NodeUser, Traversal, ensure_users, give, interpreter
from .netfault import Firewall

REPO = Path(__file__).resolve().parents[2]
SECRET = "nemesis-cluster-secret-0123456789abcdef"


def free_ports(count: int) -> list[int]:
    """Ports held until the cluster closes (harness.ports: outside the ephemeral range, so
    neither the workload's clients nor a node dialling a peer can take one)."""
    return ports.allocate(count)


def _stop(proc: Process, timeout_s: float = 10.0) -> None:
    proc.stop(grace_s=timeout_s)


@dataclass
class Node:
    node_id: str
    user: NodeUser
    raft_port: int
    grpc_port: int
    disk: SmallDisk
    tls_dir: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    proc: Process | None = None
    paused: bool = False

    @property
    def name(self) -> str:
        return f"n{self.node_id}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_dir(self) -> Path:
        return self.disk.path / "data"

    @property
    def journal(self) -> Path:
        return self.data_dir / "raft.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.proc = Process(
            self.argv,
            self.log_path,
            self.name,
            user=self.user.uid,
            group=self.user.gid,
            extra_groups=[],
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        self.paused = False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.proc = None
        self.paused = False

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.pause()
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.resume()
        self.paused = False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        self.proc = None

    def record_offsets(self) -> list[int]:
        data = self.journal.read_bytes()
        return scan(data, _header_salt(data, self.journal)).offsets

    def tear_journal_tail(self) -> None:
        """Cut the last record in the middle, as a crash during its write would (node down)."""
        os.truncate(self.journal, self.record_offsets()[-1] + 13)

    def corrupt_journal_tail(self) -> None:
        """Flip a byte in the body of the last record (node down)."""
        offset = self.record_offsets()[-1] + 30
        with open(self.journal, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([(byte[0] if byte else 0) ^ 0x5A]))


@dataclass
class Proxy:
    port: int
    proc: Process
    log_path: Path


class NemesisCluster:
    """Nodes n1..nN as users brnem1..brnemN, each on a tmpfs of ``disk_mb``, mTLS on gRPC and
    the cluster secret on Raft, and two proxies (run as root, never cut off)."""

    def __init__(self, size: int = 3, proxies: int = 2, disk_mb: int = 48) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="beanraft-nemesis-"))
        os.chmod(self.root, 0o755)
        self.size = size
        self.proxy_count = proxies
        self.disk_mb = disk_mb
        self.nodes: list[Node] = []
        self.proxies: list[Proxy] = []
        self.firewall: Firewall | None = None
        self.traversal = Traversal()
        self.tls_dir = self.root / "tls"

    # --- setting up -----------------------------------------------------------------------

    def start(self) -> None:
        users = ensure_users(self.size)
        self.traversal.grant_for(interpreter())
        self.traversal.grant_for(Path(sys.executable).resolve().parent)
        self._certificates()
        secret = self.root / "cluster.secret"
        secret.write_text(SECRET)
        os.chown(secret, 0, users[0].gid)
        os.chmod(secret, 0o640)
        self.firewall = Firewall()
        ports = free_ports(2 * self.size)
        for i, user in enumerate(users):
            self.nodes.append(self._node(str(i + 1), user, ports[2 * i], ports[2 * i + 1]))
        for node in self.nodes:
            self.firewall.add(node.name, node.user.uid, (node.raft_port, node.grpc_port))
            peers = ",".join(n.raft_addr for n in self.nodes if n is not node)
            node.argv = [
                sys.executable, "-m", "beanraft", "node", "--node-id", node.node_id,
                "--data-dir", str(node.data_dir), "--raft-addr", node.raft_addr,
                "--grpc-addr", node.grpc_addr, "--peers", peers, "--tls-dir", str(node.tls_dir),
                "--cluster-secret-file", str(secret),
            ]  # fmt: skip
            node.start()
        self.wait_for_leader(60)
        for _ in range(self.proxy_count):
            self.proxies.append(self._proxy())

    def _certificates(self) -> None:
        init_ca(self.tls_dir)
        for role in ("admin", "proxy"):
            issue_certificate(self.tls_dir, role, role, ("127.0.0.1", "localhost"))

    def _node(self, node_id: str, user: NodeUser, raft_port: int, grpc_port: int) -> Node:
        disk = SmallDisk(self.root / f"n{node_id}-disk", self.disk_mb)
        data = disk.path / "data"
        data.mkdir()
        give(data, user)
        tls = self.root / f"n{node_id}-tls"
        tls.mkdir()
        issue_certificate(self.tls_dir, "node", f"node-{node_id}", ("127.0.0.1", "localhost"))
        for name in ("ca.crt", f"node-{node_id}.crt", f"node-{node_id}.key"):
            shutil.copy(self.tls_dir / name, tls / name)
            give(tls / name, user, 0o600)
        give(tls, user)
        return Node(node_id, user, raft_port, grpc_port, disk, tls, self.root / f"n{node_id}.log")

    def add_proxy(self, first: Node | None = None) -> Proxy:
        """Another proxy; ``first`` is the node it opens its wake-up stream on first."""
        order = sorted(self.nodes, key=lambda n: n is not first)
        proxy = self._proxy(order)
        self.proxies.append(proxy)
        return proxy

    def _proxy(self, order: list[Node] | None = None) -> Proxy:
        log_path = self.root / f"proxy-{len(self.proxies) + 1}.log"
        nodes = order or self.nodes
        proc = Process(
            [sys.executable, "-m", "beanraft", "proxy", "--listen", "127.0.0.1:0",
             "--cluster", ",".join(n.grpc_addr for n in nodes), "--tls-dir", str(self.tls_dir)],
            log_path, log_path.stem, stdout_pipe=True,
        )  # fmt: skip
        return Proxy(proc.listening_port(), proc, log_path)

    # --- looking at it ----------------------------------------------------------------------

    def status(self, node: Node, timeout_s: float = 2.0) -> cluster_pb2.ClusterStatus | None:
        async def ask() -> cluster_pb2.ClusterStatus | None:
            async with open_channel(node.grpc_addr, self.tls_dir, "admin") as channel:
                try:
                    status: cluster_pb2.ClusterStatus = await cluster_pb2_grpc.ClusterStub(
                        channel
                    ).Status(empty_pb2.Empty(), timeout=timeout_s)
                    return status
                except grpc.aio.AioRpcError:
                    return None

        if not node.running or node.paused:
            return None
        return asyncio.run(ask())

    def leader(self, excluding: tuple[Node, ...] = ()) -> Node | None:
        """The node that leads and that every other answering node (but ``excluding``, cut
        off) names as leader."""
        views = {node.node_id: self.status(node) for node in self.nodes if node not in excluding}
        answering = {k: v for k, v in views.items() if v is not None}
        for node in self.nodes:
            view = answering.get(node.node_id)
            if view is None or not view.is_leader:
                continue
            if all(v.leader_grpc_addr == node.grpc_addr for v in answering.values()):
                return node
        return None

    def followers(self) -> list[Node]:
        leader = self.wait_for_leader()
        return [n for n in self.nodes if n is not leader]

    def wait_for_leader(self, timeout_s: float = 30.0, excluding: tuple[Node, ...] = ()) -> Node:
        leader: Node = wait_until(
            lambda: self.leader(excluding),
            timeout_s,
            f"a settled leader (logs in {self.root})",
            0.2,
        )
        return leader

    def snapshot(self, node: Node) -> tuple[bytes, int] | None:
        async def take() -> tuple[bytes, int] | None:
            async with open_channel(node.grpc_addr, self.tls_dir, "admin") as channel:
                stub = cluster_pb2_grpc.ClusterStub(channel)
                data, index = b"", 0
                try:
                    async for chunk in stub.StreamSnapshot(empty_pb2.Empty(), timeout=30):
                        data += chunk.data
                        index = index or chunk.applied_index
                except grpc.aio.AioRpcError:
                    return None
                return data, index

        return asyncio.run(take())

    def digests(self) -> dict[str, tuple[int, str]]:
        """Each running node's applied index and the sha256 of its machine snapshot."""
        result = {}
        for node in self.nodes:
            if node.running and not node.paused:
                taken = self.snapshot(node)
                if taken is not None:
                    data, index = taken
                    result[node.name] = (index, hashlib.sha256(data).hexdigest()[:16])
        return result

    # --- tearing down -------------------------------------------------------------------------

    def close(self, keep: bool = False) -> None:
        for proxy in self.proxies:
            _stop(proxy.proc)
        for node in self.nodes:
            node.stop()
        ports.release([p for node in self.nodes for p in (node.raft_port, node.grpc_port)])
        if self.firewall is not None:
            self.firewall.close()
        for node in self.nodes:
            node.disk.free()
            if keep:  # copy the data out of the tmpfs before it goes
                shutil.copytree(node.disk.path, self.root / f"{node.name}-data", dirs_exist_ok=True)
            node.disk.close()
        self.traversal.restore()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["GROUP", "NemesisCluster", "Node", "Proxy"]
