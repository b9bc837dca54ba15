"""What ``beanraft up`` runs, decided before anything starts: ports, up.json, secrets, argv.

Everything here is plain data and files, so it is tested without starting a process: the ports
chosen on first run and kept in ``up.json``; the CA, certificates and cluster secret created
once; and the argv of every child, built with the documented CLIs' flags.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from api import tls
from beanraft.children import ChildSpec
from jobqueue.errors import BeanraftError

STATE_FILE = "up.json"
STATE_VERSION = 1
DEFAULT_LISTEN = "127.0.0.1:11300"
LOOPBACK = "127.0.0.1"
CLIENT_CERTS = ("proxy", "admin", "worker", "viewer")


class UpError(BeanraftError):
    """``beanraft up`` cannot go on; the message says what to do."""


@dataclass(frozen=True)
class NodeAddrs:
    """Where one node listens; fixed on first run and kept in up.json."""

    node_id: str
    raft_addr: str
    grpc_addr: str
    metrics_addr: str = ""  # Prometheus /metrics; "" in an up.json from before it existed
    # The beanstalkd protocol served by the node itself; node 1's is the clients' address
    # (--listen). "" in an up.json from before the direct path: chosen on resume.
    beanstalkd_addr: str = ""


@dataclass(frozen=True)
class UpState:
    """The contents of up.json."""

    nodes: tuple[NodeAddrs, ...]
    listen: str
    version: int = STATE_VERSION


# --- state: ports and up.json --------------------------------------------------------------


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` now (all bound at once, so never the same)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def new_state(node_count: int, listen: str) -> UpState:
    """Choose free loopback ports for ``node_count`` nodes (Raft, gRPC, metrics and the
    beanstalkd protocol each; node 1 serves the protocol on ``listen``)."""
    ports = iter(free_ports(3 * node_count))
    nodes = tuple(
        NodeAddrs(
            str(i + 1),
            raft_addr=f"{LOOPBACK}:{next(ports)}",
            grpc_addr=f"{LOOPBACK}:{next(ports)}",
            metrics_addr=f"{LOOPBACK}:{next(ports)}",
        )
        for i in range(node_count)
    )
    return with_listeners(UpState(nodes=nodes, listen=listen))


def with_listeners(state: UpState) -> UpState:
    """Every node with its beanstalkd address: node 1 on ``state.listen`` (where clients are
    pointed), every other on the loopback port it already has, or a free one."""
    missing = [n for n in state.nodes[1:] if not n.beanstalkd_addr]
    ports = iter(free_ports(len(missing)))
    first, *others = state.nodes
    nodes = [replace(first, beanstalkd_addr=state.listen)]
    for node in others:
        nodes.append(
            replace(node, beanstalkd_addr=node.beanstalkd_addr or f"{LOOPBACK}:{next(ports)}")
        )
    return replace(state, nodes=tuple(nodes))


def load_state(data_dir: Path) -> UpState | None:
    """The recorded state, or None on first run."""
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        nodes = tuple(NodeAddrs(**node) for node in raw["nodes"])
        return UpState(nodes=nodes, listen=str(raw["listen"]), version=int(raw["version"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise UpError(f"{path} is damaged ({exc}): fix it, or use a new --data-dir") from exc


def save_state(data_dir: Path, state: UpState) -> None:
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def resolve_state(data_dir: Path, nodes: int | None, listen: str | None) -> UpState:
    """The state to run with: the recorded one (resume), or a new one (first run)."""
    recorded = load_state(data_dir)
    if recorded is None:
        count = 3 if nodes is None else nodes
        if not 1 <= count <= 9:
            raise UpError(f"--nodes must be between 1 and 9 (3 or 5 make sense), got {count}")
        return new_state(count, listen or DEFAULT_LISTEN)
    if nodes is not None and nodes != len(recorded.nodes):
        raise UpError(
            f"{data_dir} holds a {len(recorded.nodes)}-node cluster: run with "
            f"--nodes {len(recorded.nodes)}, change membership with `beanraft cluster join`, "
            "or use another --data-dir"
        )
    return with_listeners(UpState(recorded.nodes, listen or recorded.listen))


def check_ports_free(state: UpState) -> None:
    """Fail early, naming the port, if something else holds one of our addresses."""
    wanted = [(f"node {n.node_id} Raft", n.raft_addr) for n in state.nodes]
    wanted += [(f"node {n.node_id} gRPC", n.grpc_addr) for n in state.nodes]
    wanted += [(f"node {n.node_id} metrics", n.metrics_addr) for n in state.nodes if n.metrics_addr]
    wanted += [(f"node {n.node_id} beanstalkd", n.beanstalkd_addr) for n in state.nodes]
    for what, addr in wanted:
        host, port = split_addr(addr)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise UpError(
                    f"{addr} ({what}) is not free ({exc.strerror}): stop whatever holds it "
                    "(another `beanraft up`?) and try again"
                ) from exc


def split_addr(addr: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with a clear error."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UpError(f"bad address {addr!r}: expected HOST:PORT, like {DEFAULT_LISTEN}")
    return host, int(port)


# --- secrets: certificates and the cluster secret -------------------------------------------


def ensure_secrets(data_dir: Path, state: UpState, insecure: bool) -> list[str]:
    """Create what is missing (CA, certificates, cluster secret); return what was created."""
    created = []
    secret = data_dir / "cluster.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        created.append(str(secret))
    if insecure:
        return created
    tls_dir = data_dir / "tls"
    if not (tls_dir / "ca.crt").exists():
        tls.init_ca(tls_dir)
        created.append(f"{tls_dir}/ca.crt")
    names = [(f"node-{n.node_id}", "node") for n in state.nodes]
    names += [(name, name) for name in CLIENT_CERTS]
    for name, role in names:
        if not (tls_dir / f"{name}.crt").exists():
            # Loopback SANs only: every gRPC address up chooses is on 127.0.0.1.
            tls.issue_certificate(tls_dir, role, name)
            created.append(f"{tls_dir}/{name}.crt")
    return created


# --- children ---------------------------------------------------------------------------


def child_specs(
    state: UpState, data_dir: Path, workers: int, insecure: bool, command: Sequence[str]
) -> list[ChildSpec]:
    """The argv of every child, with the documented CLIs' flags. No proxy: every node serves
    the beanstalkd protocol itself (the direct path); ``beanraft proxy`` stays for pools that
    want one address in front of the whole cluster."""
    security = ["--insecure"] if insecure else ["--tls-dir", str(data_dir / "tls")]
    specs = []
    for node in state.nodes:
        peers = ",".join(n.raft_addr for n in state.nodes if n is not node)
        argv = [*command, "node", "--node-id", node.node_id]
        argv += ["--data-dir", str(data_dir / f"node-{node.node_id}")]
        argv += ["--raft-addr", node.raft_addr, "--grpc-addr", node.grpc_addr]
        if node.metrics_addr:
            argv += ["--metrics-addr", node.metrics_addr]
        argv += ["--beanstalkd-listen", node.beanstalkd_addr]
        if peers:
            argv += ["--peers", peers]
        argv += [*security, "--cluster-secret-file", str(data_dir / "cluster.secret")]
        specs.append(ChildSpec(f"node-{node.node_id}", argv))
    cluster = ",".join(n.grpc_addr for n in state.nodes)
    if workers > 0:
        # Every node's listener, node 1's first: a worker slot whose node stops moves on to
        # the next, so the pool keeps running while up restarts that node.
        listeners = ",".join(client_addr(n.beanstalkd_addr) for n in state.nodes)
        worker = [*command, "worker", "--beanstalkd", listeners]
        worker += ["--concurrency", str(workers), "--log-dir", str(data_dir / "logs")]
        worker += ["--cluster", cluster, *security]  # reports to the job API
        specs.append(ChildSpec("worker", worker))
    return specs


def client_addr(listen: str) -> str:
    """Where a local client dials a server that listens on ``listen`` (0.0.0.0 -> 127.0.0.1)."""
    host, port = split_addr(listen)
    return f"{LOOPBACK if host in ('0.0.0.0', '::', '[::]') else host}:{port}"
