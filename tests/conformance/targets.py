"""Starting and stopping the servers the conformance suite talks to (see conftest.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .wire import Client

REPO = Path(__file__).resolve().parents[2]
BEANSTALKD = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s} s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


@dataclass
class Server:
    """One running server process (the process that receives SIGUSR1 for drain mode)."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Connections the harness made before the test (the readiness probe): they count in
    # total-connections.
    probe_connections: int = 0
    unix_path: str | None = None

    def connect(self) -> Client:
        if self.unix_path is not None:
            return Client.unix(self.unix_path)
        return Client("127.0.0.1", self.port)

    def drain(self) -> None:
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)

    def stop(self) -> None:
        stop_process(self.process)
        for process in self.extra:
            stop_process(process)


def unix_path() -> str:
    return str(Path(tempfile.mkdtemp(prefix="beanraft-unix-")) / "sock")


def start_beanstalkd(max_job_size: int | None = None, unix: bool = False) -> Server:
    port, path = free_port(), unix_path() if unix else None
    args = [BEANSTALKD, "-l", f"unix:{path}" if path else "127.0.0.1", "-p", str(port)]
    if max_job_size is not None:
        args += ["-z", str(max_job_size)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("beanstalkd", port, process, probe_connections=1, unix_path=path)
    deadline = time.monotonic() + 10
    while True:
        try:
            server.connect().close()
            return server
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_process(process)
                raise RuntimeError("beanstalkd did not start") from None
            time.sleep(0.02)


def start_proxy(
    mode_args: list[str], max_job_size: int | None = None, listen: str = "127.0.0.1:0"
) -> tuple[int, subprocess.Popen[bytes]]:
    args = [sys.executable, "-m", "beanraft", "proxy", "--listen", listen, *mode_args]
    if max_job_size is not None:
        args += ["--max-job-size", str(max_job_size)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()  # "listening HOST:PORT", printed once serving
    if not line.startswith("listening "):
        stop_process(process)
        raise RuntimeError(f"proxy did not start: {line!r}")
    return (0 if listen.startswith("unix:") else int(line.rsplit(":", 1)[1])), process


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
    data: Path, max_job_size: int | None, listens: list[str] | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Three ``beanraft node`` processes (``--insecure``), with ``listens`` their
    ``--beanstalkd-listen`` addresses when given; the processes and their gRPC addresses."""
    raft = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    grpc = [f"127.0.0.1:{free_port()}" for _ in range(3)]
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
        log = open(data / f"n{i + 1}.log", "wb")  # noqa: SIM115 - closed with the process
        nodes.append(subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return nodes, grpc


def start_cluster(max_job_size: int | None = None, unix: bool = False) -> Server:
    """Three ``beanraft node`` processes (issue 3's flags) and a proxy in front of them."""
    data = Path(tempfile.mkdtemp(prefix="beanraft-conformance-"))
    nodes, grpc = _start_nodes(data, max_job_size)
    try:
        path = unix_path() if unix else None
        listen = f"unix:{path}" if path else "127.0.0.1:0"
        mode = ["--cluster", ",".join(grpc), "--insecure"]
        port, proxy = start_proxy(mode, max_job_size, listen)
    except Exception:
        for node in nodes:
            stop_process(node)
        raise
    return Server("cluster", port, proxy, extra=nodes, unix_path=path)


def start_node_listener(max_job_size: int | None = None, unix: bool = False) -> Server:
    """Three ``beanraft node`` processes, each serving the beanstalkd protocol itself
    (``--beanstalkd-listen``: the direct path); the client talks to the first one, leader or
    follower as the election decided."""
    data = Path(tempfile.mkdtemp(prefix="beanraft-conformance-node-"))
    ports = [free_port() for _ in range(3)]
    path = unix_path() if unix else None
    listens = [f"127.0.0.1:{port}" for port in ports]
    if path:
        listens[0] = f"unix:{path}"
    nodes, _ = _start_nodes(data, max_job_size, listens)
    server = Server("node", ports[0], nodes[0], extra=nodes[1:], unix_path=path)
    try:
        _wait_until_served(server)
    except Exception:
        server.stop()
        raise
    return server


def _wait_until_served(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"the node exited with {server.process.returncode}")
        try:
            server.connect().close()
            server.probe_connections += 1
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the node's beanstalkd listener did not start") from None
            time.sleep(0.05)


STARTERS = {
    "beanstalkd": start_beanstalkd,
    "standalone": start_standalone,
    "cluster": start_cluster,
    "node": start_node_listener,
}
