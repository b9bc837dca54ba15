"""Starting and stopping the servers the conformance suite talks to (see conftest.py). Each
is a harness.Process (its log shown when a test fails) on ports held by harness.ports."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import Process, ports, wait_until

from .wire import Client

BEANSTALKD = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
START_TIMEOUT_S = 60.0


def stop_process(process: Process, timeout_s: float = 10.0) -> None:
    process.stop(grace_s=timeout_s)


def _log(prefix: str) -> Path:
    return Path(tempfile.mkstemp(prefix=f"beanraft-{prefix}-", suffix=".log")[1])


@dataclass
class Server:
    """One running server process (the process that receives SIGUSR1 for drain mode)."""

    kind: str
    port: int
    process: Process
    extra: list[Process] = field(default_factory=list)
    # Connections the harness made before the test (the readiness probe): they count in
    # total-connections.
    probe_connections: int = 0
    unix_path: str | None = None
    held: list[int] = field(default_factory=list)  # ports released once it stopped

    def connect(self) -> Client:
        if self.unix_path is not None:
            return Client.unix(self.unix_path)
        return Client("127.0.0.1", self.port)

    def drain(self) -> None:
        """SIGUSR1, then until the server's stats say it drains (another connection asks)."""
        self.process.send_signal(signal.SIGUSR1)

        def draining() -> bool:
            with self.connect() as c:
                return c.yaml(b"stats\r\n")["draining"] == "true"

        wait_until(draining, 10, f"{self.kind} to enter drain mode")

    def stop(self) -> None:
        stop_process(self.process)
        for process in self.extra:
            stop_process(process)
        ports.release(self.held)


def unix_path() -> str:
    return str(Path(tempfile.mkdtemp(prefix="beanraft-unix-")) / "sock")


def start_beanstalkd(max_job_size: int | None = None, unix: bool = False) -> Server:
    port, path = ports.port(), unix_path() if unix else None
    args = [BEANSTALKD, "-l", f"unix:{path}" if path else "127.0.0.1", "-p", str(port)]
    if max_job_size is not None:
        args += ["-z", str(max_job_size)]
    process = Process(args, _log("beanstalkd"), "beanstalkd", cwd=None)
    server = Server("beanstalkd", port, process, unix_path=path, held=[port])
    try:
        _wait_until_served(server, 10)
    except Exception:
        server.stop()
        raise
    return server


def start_proxy(
    mode_args: list[str], max_job_size: int | None = None, listen: str = "127.0.0.1:0"
) -> tuple[int, Process]:
    """A proxy that binds its own port (``127.0.0.1:0``) and prints it once serving."""
    args = [sys.executable, "-m", "beanraft", "proxy", "--listen", listen, *mode_args]
    if max_job_size is not None:
        args += ["--max-job-size", str(max_job_size)]
    process = Process(args, _log("proxy"), "proxy", stdout_pipe=True)
    return process.listening_port(), process


def start_standalone(max_job_size: int | None = None, unix: bool = False) -> Server:
    path = unix_path() if unix else None
    listen = f"unix:{path}" if path else "127.0.0.1:0"
    port, process = start_proxy(["--standalone"], max_job_size, listen)
    return Server("standalone", port, process, unix_path=path)


# --- the cluster target ---------------------------------------------------------------------


def cluster_missing() -> str | None:
    """Why the cluster target cannot run here, or None when the node and RemoteQueue exist."""
    import importlib.util

    for module in ("cluster.cli_node", "api.client"):
        if importlib.util.find_spec(module) is None:
            return f"the cluster target needs {module}, which is not there yet"
    return None


def _start_nodes(
    data: Path, max_job_size: int | None, held: list[int], listens: list[str] | None = None
) -> tuple[list[Process], list[str]]:
    """Three ``beanraft node`` processes (``--insecure``), with ``listens`` their
    ``--beanstalkd-listen`` addresses when given; the processes and their gRPC addresses.
    The Raft and gRPC ports are added to ``held``."""
    allocated = ports.allocate(6)
    held += allocated
    raft = [ports.addr(p) for p in allocated[:3]]
    grpc = [ports.addr(p) for p in allocated[3:]]
    nodes = []
    for i in range(3):
        peers = ",".join(a for j, a in enumerate(raft) if j != i)
        args = [
            sys.executable, "-m", "beanraft", "node", "--node-id", f"n{i + 1}",
            "--data-dir", str(data / f"n{i + 1}"), "--raft-addr", raft[i],
            "--grpc-addr", grpc[i], "--peers", peers, "--insecure",
        ]  # fmt: skip
        if listens is not None:
            args += ["--beanstalkd-listen", listens[i]]
        if max_job_size is not None:
            args += ["--max-job-size", str(max_job_size)]
        nodes.append(Process(args, data / f"n{i + 1}.log", f"n{i + 1}"))
    return nodes, grpc


def start_cluster(max_job_size: int | None = None, unix: bool = False) -> Server:
    """Three ``beanraft node`` processes (issue 3's flags) and a proxy in front of them."""
    data = Path(tempfile.mkdtemp(prefix="beanraft-conformance-"))
    held: list[int] = []
    nodes, grpc = _start_nodes(data, max_job_size, held)
    try:
        path = unix_path() if unix else None
        listen = f"unix:{path}" if path else "127.0.0.1:0"
        mode = ["--cluster", ",".join(grpc), "--insecure"]
        port, proxy = start_proxy(mode, max_job_size, listen)
    except Exception:
        for node in nodes:
            stop_process(node)
        ports.release(held)
        raise
    return Server("cluster", port, proxy, extra=nodes, unix_path=path, held=held)


def start_node_listener(max_job_size: int | None = None, unix: bool = False) -> Server:
    """Three ``beanraft node`` processes, each serving the beanstalkd protocol itself
    (``--beanstalkd-listen``: the direct path); the client talks to the first one, leader or
    follower as the election decided."""
    data = Path(tempfile.mkdtemp(prefix="beanraft-conformance-node-"))
    held = ports.allocate(3)
    path = unix_path() if unix else None
    listens = [ports.addr(port) for port in held]
    if path:
        listens[0] = f"unix:{path}"
    nodes, _ = _start_nodes(data, max_job_size, held, listens)
    server = Server("node", held[0], nodes[0], extra=nodes[1:], unix_path=path, held=held)
    try:
        _wait_until_served(server)
    except Exception:
        server.stop()
        raise
    return server


def _wait_until_served(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until a client connects (TCP or unix socket); the probe counts in total-connections."""

    def served() -> bool:
        try:
            server.connect().close()
        except OSError:
            return False
        server.probe_connections += 1
        return True

    server.process.wait_until(served, timeout_s, f"the {server.kind} listener to serve")


STARTERS = {
    "beanstalkd": start_beanstalkd,
    "standalone": start_standalone,
    "cluster": start_cluster,
    "node": start_node_listener,
}
