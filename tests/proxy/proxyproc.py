"""Real processes for the proxy's integration tests: a standalone proxy, or proxies in front of
a 3-node cluster (``beanraft node`` with issue 3's flags), each killable with SIGKILL. Each is a
harness.Process (its log shown when a test fails) on ports held by harness.ports."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import Process, ports, wait_until
from harness.process import REPO

__all__ = [
    "REPO",
    "Cluster",
    "Proxy",
    "free_port",
    "start_cluster",
    "start_proxy",
    "stop",
    "wait_for_listener",
]


def free_port() -> int:
    """A port held for this session (harness.ports)."""
    return ports.port()


def stop(process: Process, timeout_s: float = 10.0) -> None:
    process.stop(grace_s=timeout_s)


@dataclass
class Proxy:
    port: int
    process: Process
    log_path: Path

    def kill(self) -> None:
        self.process.kill()


def start_proxy(mode_args: list[str], extra: list[str] | None = None) -> Proxy:
    """A proxy on a port it binds itself (``--listen 127.0.0.1:0``) and prints once serving."""
    args = [sys.executable, "-m", "beanraft", "proxy", "--listen", "127.0.0.1:0", *mode_args]
    log_path = Path(tempfile.mkstemp(prefix="beanraft-proxy-", suffix=".log")[1])
    process = Process([*args, *(extra or [])], log_path, "proxy", stdout_pipe=True)
    return Proxy(process.listening_port(), process, log_path)


@dataclass
class Cluster:
    """Three nodes; ``grpc`` lists their gRPC addresses in node order."""

    root: Path
    grpc: list[str]
    nodes: list[Process] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    listener_ports: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # every port above, released by stop()

    def add_proxy(self, *extra: str) -> Proxy:
        proxy = start_proxy(["--cluster", ",".join(self.grpc), "--insecure"], list(extra))
        self.proxies.append(proxy)
        return proxy

    def leader_index(self, timeout_s: float = 30.0) -> int:
        """The index of the node that says it leads (asks with ``beanraft cluster status``)."""

        def leader() -> tuple[int] | None:
            out = subprocess.run(
                [sys.executable, "-m", "beanraft", "cluster", "status", "--json", "--insecure",
                 "--cluster", ",".join(self.grpc)],
                cwd=REPO, capture_output=True, timeout=60,
            )  # fmt: skip
            try:
                views = json.loads(out.stdout or b"{}")
            except json.JSONDecodeError:
                views = {}
            for address, view in views.items():
                if isinstance(view, dict) and (view.get("isLeader") or view.get("is_leader")):
                    return (self.grpc.index(address),)
            return None

        return wait_until(leader, timeout_s, "a node that says it leads", poll_s=0.3)[0]

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()

    def stop(self) -> None:
        for proxy in self.proxies:
            stop(proxy.process)
        for node in self.nodes:
            stop(node)
        ports.release(self.held)


def start_cluster(listeners: bool = False) -> Cluster:
    """Three nodes; with ``listeners`` each also serves the beanstalkd protocol itself
    (``--beanstalkd-listen``, the direct path) on the ports in ``listener_ports``."""
    root = Path(tempfile.mkdtemp(prefix="beanraft-proxy-test-"))
    held = ports.allocate(9 if listeners else 6)
    raft = [ports.addr(p) for p in held[:3]]
    cluster = Cluster(root, [ports.addr(p) for p in held[3:6]], held=held)
    if listeners:
        cluster.listener_ports = held[6:]
    for i in range(3):
        peers = ",".join(a for j, a in enumerate(raft) if j != i)
        args = [
            sys.executable, "-m", "beanraft", "node", "--node-id", f"n{i + 1}",
            "--data-dir", str(root / f"n{i + 1}"), "--raft-addr", raft[i],
            "--grpc-addr", cluster.grpc[i], "--peers", peers, "--insecure",
        ]  # fmt: skip
        if listeners:
            args += ["--beanstalkd-listen", f"127.0.0.1:{cluster.listener_ports[i]}"]
        cluster.nodes.append(Process(args, root / f"n{i + 1}.log", f"n{i + 1}"))
    return cluster


def wait_for_listener(port: int, process: Process, timeout_s: float = 60) -> None:
    process.wait_for_port(port, timeout_s)
