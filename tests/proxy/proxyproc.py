"""Real processes for the proxy's integration tests: a standalone proxy, or proxies in front of
a 3-node cluster (``beanraft node`` with issue 3's flags), each killable with SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


@dataclass
class Proxy:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_proxy(mode_args: list[str], extra: list[str] | None = None) -> Proxy:
    args = [sys.executable, "-m", "beanraft", "proxy", "--listen", "127.0.0.1:0", *mode_args]
    log_path = Path(tempfile.mkstemp(prefix="beanraft-proxy-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*args, *(extra or [])], cwd=REPO, stdout=subprocess.PIPE, stderr=log
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode()  # "listening HOST:PORT" once serving
    if not line.startswith("listening "):
        stop(process)
        raise RuntimeError(f"proxy did not start: {line!r}")
    return Proxy(int(line.rsplit(":", 1)[1]), process, log_path)


@dataclass
class Cluster:
    """Three nodes; ``grpc`` lists their gRPC addresses in node order."""

    root: Path
    grpc: list[str]
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    listener_ports: list[int] = field(default_factory=list)

    def add_proxy(self, *extra: str) -> Proxy:
        proxy = start_proxy(["--cluster", ",".join(self.grpc), "--insecure"], list(extra))
        self.proxies.append(proxy)
        return proxy

    def leader_index(self, timeout_s: float = 30.0) -> int:
        """The index of the node that says it leads (asks with ``beanraft cluster status``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
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
                    return self.grpc.index(address)
            time.sleep(0.3)
        raise RuntimeError("no leader within the timeout")

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()
        self.nodes[index].wait(10)

    def stop(self) -> None:
        for proxy in self.proxies:
            stop(proxy.process)
        for node in self.nodes:
            stop(node)


def start_cluster(listeners: bool = False) -> Cluster:
    """Three nodes; with ``listeners`` each also serves the beanstalkd protocol itself
    (``--beanstalkd-listen``, the direct path) on the ports in ``listener_ports``."""
    root = Path(tempfile.mkdtemp(prefix="beanraft-proxy-test-"))
    raft = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    cluster = Cluster(root, [f"127.0.0.1:{free_port()}" for _ in range(3)])
    if listeners:
        cluster.listener_ports = [free_port() for _ in range(3)]
    for i in range(3):
        peers = ",".join(a for j, a in enumerate(raft) if j != i)
        args = [
            sys.executable, "-m", "beanraft", "node", "--node-id", f"n{i + 1}",
            "--data-dir", str(root / f"n{i + 1}"), "--raft-addr", raft[i],
            "--grpc-addr", cluster.grpc[i], "--peers", peers, "--insecure",
        ]  # fmt: skip
        if listeners:
            args += ["--beanstalkd-listen", f"127.0.0.1:{cluster.listener_ports[i]}"]
        log = open(root / f"n{i + 1}.log", "wb")  # noqa: SIM115 - the child owns it
        cluster.nodes.append(subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return cluster


def wait_for_listener(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on {port} within {timeout_s} s") from None
            time.sleep(0.05)
