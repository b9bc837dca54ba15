"""``beanraft cluster status|join|leave|snapshot|restore``: cluster administration.

``status``, ``join``, ``leave`` and ``snapshot`` talk gRPC to the nodes named by ``--cluster``
(as the ``admin`` certificate from ``--tls-dir``, or plaintext with ``--insecure``). ``restore``
is offline: it checks a snapshot file and writes it as the seed of each new node's data dir;
nodes started on those dirs (same ``--peers``) begin from the same state and go on numbering jobs
after the highest id in the snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2
from cluster.client_config import ClientConfigError, resolve

HEALTHY_LAG = 1000  # entries: a member this close follows (a busy cluster is never at 0)
STATUS_POLL_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = sub.add_parser("status", help="members, leader, term, indexes and lag")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to this long for a healthy cluster (a leader, every member connected "
        f"and at most {HEALTHY_LAG} entries behind); exit 1 if it is not by then",
    )
    status.add_argument(
        "--members", type=int, help="with --wait: also wait for exactly this many members"
    )
    join = sub.add_parser("join", help="add a node (then start it with --peers or --join)")
    join.add_argument("--node-id", required=True, help="the new member's id (unique)")
    join.add_argument("--raft-addr", required=True, help="the new member's Raft HOST:PORT (unique)")
    join.add_argument("--grpc-addr", default="", help="the node's gRPC address (leader hints)")
    leave = sub.add_parser("leave", help="remove a node (the leader hands over first)")
    leave.add_argument("--node-id", required=True, help="the member to remove (its id)")
    snapshot = sub.add_parser("snapshot", help="write a consistent snapshot of the jobs")
    snapshot.add_argument(
        "--out", required=True, type=Path, help="the file to write (refuses a directory)"
    )
    restore = sub.add_parser("restore", help="seed new nodes' data dirs from a snapshot")
    restore.add_argument("file", type=Path, help="a snapshot from `beanraft cluster snapshot`")
    restore.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        action="append",
        help="an empty data dir for one new node; repeat it for every node",
    )
    for action in (status, join, leave, snapshot):  # restore is offline: no cluster to name
        action.add_argument("--cluster", default="", help="gRPC addresses of nodes, A,B,C")
        group = action.add_mutually_exclusive_group()
        group.add_argument("--tls-dir", type=Path, help="ca.crt and admin.crt/.key")
        group.add_argument("--insecure", action="store_true", help="plaintext gRPC")


def run(args: argparse.Namespace) -> int:
    """One line on any error an operator can cause (a bad address, a missing certificate
    directory or file, an output path that is a directory), never a traceback."""
    from api.tls import TlsError

    try:
        return _run_action(args)
    except (ValueError, TlsError, OSError) as exc:
        print(f"beanraft cluster {args.action}: {exc}", file=sys.stderr)
        return 1


def _run_action(args: argparse.Namespace) -> int:
    if args.action == "restore":
        return restore(args.file, args.data_dir)
    if args.action == "snapshot" and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a directory: name the file to write")
    try:
        # Flags, else BEANRAFT_CLUSTER and BEANRAFT_TLS_DIR, else the file `beanraft up` wrote.
        config = resolve(args.cluster, args.tls_dir, args.insecure)
    except ClientConfigError as exc:
        raise SystemExit(f"beanraft cluster: {exc}") from None
    addresses = list(config.addresses)
    args.tls_dir, args.insecure = config.tls_dir, config.tls_dir is None
    try:
        status = asyncio.run(_run(args, addresses))
    except grpc.aio.AioRpcError as exc:
        reason = _tls_refusal(exc.code(), addresses, args.tls_dir)
        detail = f"{exc.code().name}: {exc.details()}" if reason is None else reason
        print(f"beanraft cluster {args.action}: {detail}", file=sys.stderr)
        return 1
    if status != 0 and args.action == "status":
        reason = _tls_refusal(grpc.StatusCode.UNAVAILABLE, addresses, args.tls_dir)
        if reason is not None:
            print(f"beanraft cluster status: {reason}", file=sys.stderr)
    return status


def _tls_refusal(code: grpc.StatusCode, addresses: list[str], tls_dir: Path | None) -> str | None:
    """gRPC reports a refused TLS handshake only as UNAVAILABLE "Socket closed": say what was
    wrong with the certificates instead (an operator's most common first mistake)."""
    if code != grpc.StatusCode.UNAVAILABLE or tls_dir is None:
        return None
    from cluster.tls_diagnose import explain_refusal

    for address in addresses:
        reason = explain_refusal(address, tls_dir, "admin")
        if reason is not None:
            return f"UNAUTHENTICATED: {reason}"
    return None


async def _run(args: argparse.Namespace, addresses: list[str]) -> int:
    from api.client import open_channel

    channels = {a: open_channel(a, args.tls_dir, "admin") for a in addresses}
    stubs = {a: cluster_pb2_grpc.ClusterStub(ch) for a, ch in channels.items()}
    try:
        if args.action == "status":
            return await _status(stubs, args.json, args.wait, args.members)
        if args.action == "join":
            request = cluster_pb2.JoinRequest(
                node_id=args.node_id, addr=args.raft_addr, grpc_addr=args.grpc_addr
            )
            await _first_answer(stubs, "Join", request)
            print(f"node {args.node_id} ({args.raft_addr}) is a member")
            return 0
        if args.action == "leave":
            await _first_answer(stubs, "Leave", cluster_pb2.LeaveRequest(node_id=args.node_id))
            print(
                f"node {args.node_id} left the cluster; if it is running it stops by itself "
                "(to add it again, start it with an empty --data-dir and --join)"
            )
            return 0
        return await _snapshot(stubs, args.out)
    finally:
        for channel in channels.values():
            await channel.close()


async def _first_answer(stubs: dict[str, Any], method: str, request: Any) -> Any:
    """Call ``method`` on the first node that answers (any node forwards to the leader)."""
    error: grpc.aio.AioRpcError | None = None
    for _ in range(3):
        for stub in stubs.values():
            try:
                return await getattr(stub, method)(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                error = exc
        await asyncio.sleep(1.0)
    assert error is not None
    raise error


async def _status(
    stubs: dict[str, Any], as_json: bool, wait_s: float | None = None, members: int | None = None
) -> int:
    """Print every node's view; with ``wait_s``, first wait for a healthy cluster (what an
    operator does after adding, removing, replacing or upgrading a node)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + (wait_s or 0.0)
    while True:
        views = await _views(stubs)
        problem = _unhealthy(views, members)
        if wait_s is None or problem is None or loop.time() >= give_up:
            break
        await asyncio.sleep(STATUS_POLL_S)
    if as_json:
        print(json.dumps({a: _as_dict(v) for a, v in views.items()}, indent=2))
    else:
        _print_status(views)
    if wait_s is not None and problem is not None:
        print(
            f"beanraft cluster status: not healthy after {wait_s:g} s: {problem}", file=sys.stderr
        )
        return 1
    return 0 if any(isinstance(v, cluster_pb2.ClusterStatus) for v in views.values()) else 1


async def _views(stubs: dict[str, Any]) -> dict[str, Any]:
    views: dict[str, Any] = {}
    for address, stub in stubs.items():
        try:
            views[address] = await stub.Status(empty_pb2.Empty(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            views[address] = exc
    return views


def _unhealthy(views: dict[str, Any], members: int | None) -> str | None:
    """Why the cluster is not healthy yet, or None."""
    leader = next(
        (v for v in views.values() if isinstance(v, cluster_pb2.ClusterStatus) and v.is_leader),
        None,
    )
    if leader is None:
        return "no leader answered"
    if members is not None and len(leader.members) != members:
        return f"{len(leader.members)} members, not {members}"
    for member in leader.members:
        if not member.connected:
            return f"node {member.node_id or member.raft_addr} is not connected"
        if member.lag > HEALTHY_LAG:
            return f"node {member.node_id} is {member.lag} entries behind"
    return None


def _as_dict(view: Any) -> dict[str, Any]:
    if isinstance(view, grpc.aio.AioRpcError):
        return {"error": f"{view.code().name}: {view.details()}"}
    return _message_dict(view)


def _message_dict(message: Any) -> dict[str, Any]:
    """A status as JSON numbers (protobuf's JSON mapping writes 64-bit integers as strings),
    and a lag this node cannot know (-1: it is not the leader) as null."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            if _repeated(field):
                out[field.name] = [_message_dict(item) for item in value]
            else:
                out[field.name] = _message_dict(value)
        elif _repeated(field):
            out[field.name] = list(value)
        else:
            out[field.name] = value
    if out.get("lag", 0) == -1:
        out["lag"] = None
    return out


def _repeated(field: Any) -> bool:
    # protobuf 5.28+ has is_repeated and later releases dropped label; older ones only label.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _print_status(views: dict[str, Any]) -> None:
    leader_view = next(
        (v for v in views.values() if isinstance(v, cluster_pb2.ClusterStatus) and v.is_leader),
        None,
    )
    print(f"{'node':<22} {'role':<9} {'term':>6} {'commit':>9} {'applied':>9}")
    for address, view in views.items():
        if isinstance(view, grpc.aio.AioRpcError):
            print(f"{address:<22} {'DOWN':<9} {view.code().name}")
            continue
        role = "leader" if view.is_leader else "follower"
        name = f"{view.node_id}@{address}"
        print(f"{name:<22} {role:<9} {view.term:>6} {view.commit_index:>9} {view.applied_index:>9}")
    if leader_view is None:
        print("no leader answered: the cluster may be electing or without quorum")
        return
    print(f"\nmembers (as the leader {leader_view.node_id} sees them):")
    print(f"{'node id':<10} {'raft':<22} {'grpc':<22} {'connected':<10} {'lag':>6}")
    for m in leader_view.members:
        lag = "" if m.lag < 0 else str(m.lag)
        leader_mark = " (leader)" if m.is_leader else ""
        print(
            f"{m.node_id or '?':<10} {m.raft_addr:<22} {m.grpc_addr or '?':<22} "
            f"{'yes' if m.connected else 'NO':<10} {lag:>6}{leader_mark}"
        )


async def _snapshot(stubs: dict[str, Any], out: Path) -> int:
    leader = await _leader_stub(stubs)
    data = bytearray()
    index = 0
    async for chunk in leader.StreamSnapshot(empty_pb2.Empty(), timeout=120):
        data += chunk.data
        index = index or chunk.applied_index
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out)
    print(f"wrote {len(data)} bytes to {out} (Raft index {index})")
    return 0


async def _leader_stub(stubs: dict[str, Any]) -> Any:
    for stub in stubs.values():
        try:
            status = await stub.Status(empty_pb2.Empty(), timeout=5)
        except grpc.aio.AioRpcError:
            continue
        if status.is_leader:
            return stub
    return next(iter(stubs.values()))  # no leader answered: any node's state is consistent


def restore(file: Path, data_dirs: list[Path]) -> int:
    from statemachine.machine import JobStateMachine

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SystemExit(f"beanraft cluster restore: cannot read {file}: {exc.strerror}") from None
    try:
        JobStateMachine.restore(data)
    except Exception as exc:
        raise SystemExit(
            f"beanraft cluster restore: {file} is not a beanraft snapshot: {exc}"
        ) from None
    for data_dir in data_dirs:
        if (data_dir / "raft.log").exists() or (data_dir / "raft.journal").exists():
            raise SystemExit(
                f"beanraft cluster restore: {data_dir} already holds a node's journal: restore "
                "seeds only new data dirs (use empty directories for the new cluster)"
            )
    for data_dir in data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "seed.snapshot").write_bytes(data)
        print(f"seeded {data_dir} from {file}")
    return 0
