"""A real ``beanraft node`` started with --tls-dir: it serves a client whose certificate is
right for the call, and refuses a wrong certificate, a missing one and a wrong role."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Process, ports

from api import cluster_pb2_grpc, empty_pb2, jsm_pb2, jsm_pb2_grpc, tls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[str]:
    """One single-member node with mTLS; yields its gRPC address once it answers health checks."""
    data = tmp_path_factory.mktemp("node")
    secret = data / "cluster.secret"
    secret.write_text("a-test-secret-of-enough-length\n")
    raft_port, grpc_port = ports.allocate(2)
    grpc_addr = ports.addr(grpc_port)
    argv = [sys.executable, "-m", "beanraft", "node", "--node-id", "1"]
    argv += ["--data-dir", str(data / "node-1"), "--raft-addr", ports.addr(raft_port)]
    argv += ["--grpc-addr", grpc_addr, "--tls-dir", str(tls_dir)]
    argv += ["--cluster-secret-file", str(secret)]
    process = Process(argv, data / "node.log", "node-1", cwd=None)
    try:
        _wait_for_leader(grpc_addr, tls_dir, process)
        yield grpc_addr
    finally:
        process.stop(grace_s=30)
        ports.release([raft_port, grpc_port])


def _wait_for_leader(addr: str, tls_dir: Path, process: Process) -> None:
    with grpc.secure_channel(addr, tls.channel_credentials(tls_dir, "admin")) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        process.wait_until(serving, 90, "the node to serve health checks")


def _put(channel: grpc.Channel) -> int:
    request = jsm_pb2.PutRequest(priority=1, ttr=60, tube_name="default", body=b"x", body_size=1)
    return int(jsm_pb2_grpc.JobStateMachineStub(channel).Put(request, timeout=20).job_id)


def test_node_serves_a_put_from_a_proxy_certificate(node: str, tls_dir: Path) -> None:
    with grpc.secure_channel(node, tls.channel_credentials(tls_dir, "proxy")) as channel:
        assert _put(channel) >= 1


def test_node_lets_a_viewer_read_status_but_not_put(node: str, tls_dir: Path) -> None:
    with grpc.secure_channel(node, tls.channel_credentials(tls_dir, "viewer")) as channel:
        cluster_pb2_grpc.ClusterStub(channel).Status(empty_pb2.Empty(), timeout=20)
        with pytest.raises(grpc.RpcError) as caught:
            _put(channel)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == (
        "role viewer is not allowed to perform operation put (certificate 'viewer', "
        "/coolbeans.api.v1.JobStateMachine/Put); allowed roles: admin, node, proxy, worker"
    )


def test_node_refuses_a_certificate_from_another_ca(
    node: str, tls_dir: Path, foreign_tls_dir: Path
) -> None:
    # The client trusts the node's CA, as a real client would, but presents a foreign certificate.
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(foreign_tls_dir / "admin.key").read_bytes(),
        certificate_chain=(foreign_tls_dir / "admin.crt").read_bytes(),
    )
    with grpc.secure_channel(node, creds) as channel, pytest.raises(grpc.RpcError) as caught:
        _put(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_node_refuses_a_client_without_a_certificate(node: str, tls_dir: Path) -> None:
    creds = grpc.ssl_channel_credentials((tls_dir / "ca.crt").read_bytes())
    with grpc.secure_channel(node, creds) as channel, pytest.raises(grpc.RpcError) as caught:
        _put(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_node_refuses_plaintext(node: str) -> None:
    with grpc.insecure_channel(node) as channel, pytest.raises(grpc.RpcError) as caught:
        _put(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cluster_cli_with_a_foreign_certificate_says_what_was_wrong(
    node: str, foreign_tls_dir: Path
) -> None:
    # gRPC itself only says UNAVAILABLE "Socket closed" for a refused handshake.
    argv = [sys.executable, "-m", "beanraft", "cluster", "status", "--cluster", node]
    result = subprocess.run(
        [*argv, "--tls-dir", str(foreign_tls_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "UNAUTHENTICATED" in result.stderr
    assert "use different CAs" in result.stderr


def test_a_proxy_with_a_foreign_certificate_stops_at_once_saying_what_was_wrong(
    node: str, foreign_tls_dir: Path
) -> None:
    argv = [sys.executable, "-m", "beanraft", "proxy", "--listen", "127.0.0.1:0"]
    argv += ["--cluster", node, "--tls-dir", str(foreign_tls_dir), "--tls-name", "admin"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refuses our certificate (admin)" in result.stderr
    assert "use different CAs" in result.stderr


@pytest.mark.parametrize(
    "service",
    ["", "coolbeans.api.v1.JobStateMachine", "coolbeans.api.v1.Cluster", "joblet.JobletService"],
)
def test_the_health_service_knows_every_service_by_name(
    node: str, tls_dir: Path, service: str
) -> None:
    with grpc.secure_channel(node, tls.channel_credentials(tls_dir, "viewer")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
