"""A real gRPC server on 127.0.0.1 with mTLS and the role interceptor, called by real clients
holding each role's certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api import tls
from cluster.auth import METHOD_ROLES

from .conftest import Method, Server, call, registered_methods, start_server

METHODS = registered_methods()


def _channel(server: Server, tls_dir: Path, name: str) -> grpc.Channel:
    return grpc.secure_channel(server.address, tls.channel_credentials(tls_dir, name))


def _expected_allowed(role: str) -> set[str]:
    return {m.full_name for m in METHODS if role in METHOD_ROLES.get(m.full_name, frozenset())}


@pytest.mark.parametrize("role", tls.ROLES)
def test_each_role_gets_exactly_its_methods(role: str, tls_dir: Path, mtls_server: Server) -> None:
    allowed, denied = set(), {}
    with _channel(mtls_server, tls_dir, role) as channel:
        for method in METHODS:
            try:
                call(channel, method)
                allowed.add(method.full_name)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    denied[method.full_name] = exc.details()
                    continue
                # Only the real health servicer may answer with its own error (it does not
                # implement List): the interceptor let that call through.
                assert method.service == "grpc.health.v1.Health", (method, exc.details())
                assert exc.code() == grpc.StatusCode.UNIMPLEMENTED, (method, exc.details())
                allowed.add(method.full_name)
    assert allowed == _expected_allowed(role)
    for method_name, message in denied.items():
        assert f"role {role} is not allowed" in message and method_name in message, message
        assert (role, method_name) not in mtls_server.recorder.calls
    ours = {m for m in allowed if not m.startswith("/grpc.health")}
    assert {m for r, m in mtls_server.recorder.calls if r == role} == ours


def test_admin_and_node_may_call_everything(tls_dir: Path, mtls_server: Server) -> None:
    for role in ("admin", "node"):
        assert _expected_allowed(role) == {m.full_name for m in METHODS}


def test_viewer_reads_but_cannot_put_reserve_join_or_snapshot(
    tls_dir: Path, mtls_server: Server
) -> None:
    by_name = {m.full_name: m for m in METHODS}
    with _channel(mtls_server, tls_dir, "viewer") as channel:
        for read in ("JobStateMachine/PeekReady", "JobStateMachine/GetStatsYaml", "Cluster/Status"):
            call(channel, by_name[f"/coolbeans.api.v1.{read}"])
        for write in ("JobStateMachine/Put", "JobStateMachine/Reserve", "Cluster/Join"):
            with pytest.raises(grpc.RpcError) as caught:
                call(channel, by_name[f"/coolbeans.api.v1.{write}"])
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            operation = {"Put": "put", "Reserve": "reserve", "Join": "join"}[write.split("/")[1]]
            assert caught.value.details() == (
                f"role viewer is not allowed to perform operation {operation} (certificate "
                f"'viewer', /coolbeans.api.v1.{write}); allowed roles: "
                f"{', '.join(sorted(METHOD_ROLES['/coolbeans.api.v1.' + write]))}"
            )


def test_proxy_may_stream_reserve_updates_but_not_leave_the_cluster(
    tls_dir: Path, mtls_server: Server
) -> None:
    by_name = {m.full_name: m for m in METHODS}
    with _channel(mtls_server, tls_dir, "proxy") as channel:
        call(channel, by_name["/coolbeans.api.v1.JobStateMachine/StreamReserveUpdates"])
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, by_name["/coolbeans.api.v1.Cluster/Leave"])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ("proxy", "/coolbeans.api.v1.Cluster/Leave") not in mtls_server.recorder.calls


def test_health_check_answers_every_role(tls_dir: Path, mtls_server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for role in tls.ROLES:
        with _channel(mtls_server, tls_dir, role) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_method_missing_from_the_table_is_denied_to_admin(tls_dir: Path) -> None:
    server, info = start_server(tls.server_credentials(tls_dir, "node-1"), tls_dir)
    extra = grpc.method_handlers_generic_handler(
        "beanraft.test.Secret",
        {"Open": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"secret")},
    )
    server.add_generic_rpc_handlers([extra])
    try:
        with _channel(info, tls_dir, "admin") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary("/beanraft.test.Secret/Open")(b"", timeout=10)
            with pytest.raises(grpc.RpcError) as unserved:
                channel.unary_unary("/coolbeans.api.v1.Nope/Nothing")(b"", timeout=10)
    finally:
        server.stop(grace=None)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == (
        "/beanraft.test.Secret/Open is not in beanraft's access table, "
        "so it is denied to every role"
    )
    assert unserved.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _refused(server: Server, credentials: grpc.ChannelCredentials) -> grpc.RpcError:
    method = Method("/coolbeans.api.v1.JobStateMachine/Put", "", "Put", False, False)
    with (
        grpc.secure_channel(server.address, credentials) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        call(channel, method, timeout_s=10)
    assert server.recorder.calls == []
    return caught.value


@pytest.fixture
def fresh_server(tls_dir: Path) -> Iterator[Server]:
    server, info = start_server(tls.server_credentials(tls_dir, "node-1"), tls_dir)
    try:
        yield info
    finally:
        server.stop(grace=None)


def test_certificate_from_another_ca_is_refused(
    tls_dir: Path, foreign_tls_dir: Path, fresh_server: Server
) -> None:
    ca_pem = (tls_dir / "ca.crt").read_bytes()
    key_pem = (foreign_tls_dir / "admin.key").read_bytes()
    cert_pem = (foreign_tls_dir / "admin.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)
    # The TLS handshake refuses it before any RPC exists, so no handler runs.
    assert _refused(fresh_server, creds).code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_a_certificate_is_refused(tls_dir: Path, fresh_server: Server) -> None:
    creds = grpc.ssl_channel_credentials((tls_dir / "ca.crt").read_bytes())
    assert _refused(fresh_server, creds).code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(tls_dir: Path, fresh_server: Server) -> None:
    import datetime

    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    tls.issue_certificate(
        tls_dir, "admin", "expired-admin", not_valid_before=long_ago, valid_days=1
    )
    creds = grpc.ssl_channel_credentials(
        (tls_dir / "ca.crt").read_bytes(),
        (tls_dir / "expired-admin.key").read_bytes(),
        (tls_dir / "expired-admin.crt").read_bytes(),
    )
    assert _refused(fresh_server, creds).code() == grpc.StatusCode.UNAVAILABLE
    # Our own client helper says why before it even dials.
    with pytest.raises(tls.TlsError, match=r"expired-admin\.crt expired on"):
        tls.channel_credentials(tls_dir, "expired-admin")


def test_plaintext_connection_gets_unauthenticated_with_a_reason(tls_dir: Path) -> None:
    server, info = start_server(None, tls_dir)
    try:
        with (
            grpc.insecure_channel(info.address) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            channel.unary_unary("/coolbeans.api.v1.JobStateMachine/Put")(b"", timeout=10)
    finally:
        server.stop(grace=None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a verified client certificate and this connection has none" in (
        caught.value.details() or ""
    )
    assert info.recorder.calls == []


def test_server_certificate_from_another_ca_is_refused_by_the_client(
    tls_dir: Path, foreign_tls_dir: Path, fresh_server: Server
) -> None:
    # A client of a foreign cluster dials ours: it must not trust our server either.
    creds = tls.channel_credentials(foreign_tls_dir, "admin")
    assert _refused(fresh_server, creds).code() == grpc.StatusCode.UNAVAILABLE
