"""A running node: the Raft node, its gRPC server (mTLS + roles), health and metrics.

``run_node`` is what ``beanraft node`` calls. With ``join`` set, the node first asks the cluster
for its members and to be added (``Cluster.Join``, forwarded to the leader), and only then starts
Raft with those members as partners (pysyncobj's order: a node must be a member before its
Raft starts, or the others ignore it). It serves the
standard gRPC health service: ``SERVING`` while this node knows a leader and has a quorum (any
node serves any call, by forwarding), ``NOT_SERVING`` otherwise.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2, joblet_pb2_grpc, jsm_pb2_grpc
from cluster.grpc_cluster import ClusterServicer
from cluster.grpc_joblet import JobletServicer
from cluster.grpc_jsm import JobStateMachineServicer
from cluster.metrics import NodeMetrics
from cluster.node import NodeConfig, RaftNode
from cluster.service import QueueService
from jobqueue.errors import BeanraftError

log = structlog.get_logger(__name__)


# Clients keep streams open for hours (ApplyStream, StreamWakeups) and ping every 10 s to notice
# a dead node (api/client.py); without this, gRPC's default (one ping per 5 minutes when no data
# flows) answers an idle stream's pings with GOAWAY "too_many_pings" and drops every stream.
SERVER_OPTIONS = [
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # ListJobs answers with every record (joblet's API has no pages): 100,000 records are
    # about 10 MB. A client must raise its own receive limit for that, or use ListJobsPage.
    ("grpc.max_send_message_length", 64 << 20),
    # gRPC's default SO_REUSEPORT lets a second node bind the same port and take half its calls.
    ("grpc.so_reuseport", 0),
]


# Every service a client may ask the health service about by name ("" is the node as a whole).
HEALTH_SERVICES = (
    "",
    "coolbeans.api.v1.JobStateMachine",
    "coolbeans.api.v1.Cluster",
    "joblet.JobletService",
)


class AddressInUse(BeanraftError):
    """An address this node must listen on cannot be bound exclusively; says who to ask."""


def check_free(addr: str, what: str) -> None:
    """Refuse an address another socket listens on (SO_REUSEADDR: a port a previous run left
    in TIME_WAIT is fine; one that something listens on is not)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise AddressInUse(
                f"cannot listen on {addr} for {what}: {exc.strerror}; another node or program "
                f"holds it (`ss -ltnp 'sport = :{port}'` names it): stop it or choose another port"
            ) from None


@dataclass
class ServerOptions:
    tls_dir: Path | None
    metrics_addr: str | None = None
    join: str | None = None


class NodeServer:
    def __init__(self, config: NodeConfig, options: ServerOptions) -> None:
        self.config = config
        self.options = options
        self.node: RaftNode | None = None
        self.server: grpc.aio.Server | None = None
        self.service: QueueService | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self.removed = asyncio.Event()  # set when the log removes this node: run_node exits

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Before anything starts: a node that shares a port with another would serve two
        # clusters' clients alternately (gRPC) or never elect (Raft), and look healthy.
        check_free(self.config.raft_addr, "Raft")
        check_free(self.config.grpc_addr, "gRPC")
        if self.options.join:
            self.config.peers = await join_cluster(self.config, self.options)
        self.node = node = RaftNode(self.config, loop)
        metrics = NodeMetrics(node)
        node.on_state_change = metrics.observe_state_change
        node.proposer._on_commit = metrics.commit_latency.observe
        node.syncobj.addOnTickCallback(metrics.refresh_jobs)
        node.start()
        self.service = QueueService(node, self.options.tls_dir)
        self.server = self._grpc_server()
        self._bind(self.server)
        await self.server.start()
        if self.options.metrics_addr:
            metrics.serve(self.options.metrics_addr)
        self._health_task = loop.create_task(self._health_loop())
        log.info(
            "node started",
            node_id=self.config.node_id,
            raft_addr=self.config.raft_addr,
            grpc_addr=self.config.grpc_addr,
            peers=",".join(self.config.peers),
            fsync=self.config.fsync,
            tls=self.options.tls_dir is not None,
            metrics_addr=self.options.metrics_addr or "off",
        )

    def _grpc_server(self) -> grpc.aio.Server:
        interceptors = []
        if self.options.tls_dir is not None:
            from cluster.auth import AioRoleInterceptor

            interceptors.append(AioRoleInterceptor.from_tls_dir(self.options.tls_dir))
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        assert self.service is not None
        jsm_pb2_grpc.add_JobStateMachineServicer_to_server(
            JobStateMachineServicer(self.service), server
        )
        cluster_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self.service), server)
        joblet_pb2_grpc.add_JobletServiceServicer_to_server(JobletServicer(self.service), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        return server

    def _bind(self, server: grpc.aio.Server) -> None:
        addr = self.config.grpc_addr
        try:
            if self.options.tls_dir is None:
                port = server.add_insecure_port(addr)
            else:
                from api.tls import server_credentials

                name = f"node-{self.config.node_id}"
                port = server.add_secure_port(addr, server_credentials(self.options.tls_dir, name))
        except RuntimeError as exc:  # newer gRPC raises where older ones return 0
            raise AddressInUse(f"cannot listen on {addr} for gRPC: {exc}") from None
        if port == 0:
            raise AddressInUse(
                f"cannot listen on {addr} for gRPC: the address is in use or not this host's"
            )

    async def _health_loop(self) -> None:
        assert self.node is not None
        serving = None
        while True:
            if self.node.removed:
                log.warning(
                    "this node was removed from the cluster: stopping (to add it again, start "
                    "it with an empty --data-dir and --join MEMBER)",
                    node_id=self.config.node_id,
                )
                self.removed.set()
                return
            status = self.node.syncobj._getLeader() is not None and self.node.syncobj.hasQuorum
            if status != serving:
                serving = status
                code = (
                    health_pb2.HealthCheckResponse.SERVING
                    if status
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in HEALTH_SERVICES:
                    await self._health.set(service, code)
            await self._register_with_leader()
            await asyncio.sleep(0.2)

    async def _register_with_leader(self) -> None:
        """A follower missing from the member directory asks the leader to record its gRPC
        address (Join of an existing member changes only the directory)."""
        node, service = self.node, self.service
        assert node is not None and service is not None
        if node.is_leader() or node.registered():
            return
        _, leader_grpc = node.leader_info()
        if not leader_grpc:
            return
        request = cluster_pb2.JoinRequest(
            node_id=self.config.node_id,
            addr=self.config.raft_addr,
            grpc_addr=self.config.grpc_addr,
            incarnation=node.incarnation,
        )
        try:
            await cluster_pb2_grpc.ClusterStub(service.channel(leader_grpc)).Join(
                request, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("registration with the leader failed", reason=exc.details())

    async def stop(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        if self.server:
            await self.server.stop(grace=1.0)
        if self.service:
            await self.service.close()
        if self.node:
            await self.node.stop()
        log.info("node stopped", node_id=self.config.node_id)


async def join_cluster(config: NodeConfig, options: ServerOptions) -> list[str]:
    """Ask the cluster at ``options.join`` to add this node; return the other members."""
    from api.client import open_channel

    assert options.join is not None
    channel = open_channel(options.join, options.tls_dir, f"node-{config.node_id}")
    stub = cluster_pb2_grpc.ClusterStub(channel)
    try:
        for attempt in range(60):
            try:
                status = await stub.Status(empty_pb2.Empty(), timeout=5)
                request = cluster_pb2.JoinRequest(
                    node_id=config.node_id,
                    addr=config.raft_addr,
                    grpc_addr=config.grpc_addr,
                    incarnation=config.incarnation(),
                )
                await stub.Join(request, timeout=60)
                members = [m.raft_addr for m in status.members if m.raft_addr != config.raft_addr]
                log.info("joined cluster", via=options.join, members=",".join(members))
                return members
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    raise
                log.info("join not possible yet", attempt=attempt, reason=exc.details())
                await asyncio.sleep(1.0)
        raise RuntimeError(f"could not join the cluster at {options.join} within 60 attempts")
    finally:
        await channel.close()


# A service run inside the node's process and loop beside gRPC (the composition root adds the
# beanstalkd listener this way, so this package never imports the proxy): started once the
# node serves, it returns the coroutine function that stops it.
Extra = Callable[["NodeServer"], Awaitable[Callable[[], Awaitable[None]]]]


async def run_node(config: NodeConfig, options: ServerOptions, extras: Sequence[Extra] = ()) -> int:
    """Run until SIGTERM or SIGINT; stop cleanly (a restart keeps its state and membership)."""
    server = NodeServer(config, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    stoppers = [await start(server) for start in extras]
    stop_wait = asyncio.ensure_future(stop.wait())
    removed_wait = asyncio.ensure_future(server.removed.wait())
    await asyncio.wait([stop_wait, removed_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    removed_wait.cancel()
    for stopper in reversed(stoppers):
        await stopper()
    await server.stop()
    return 0
