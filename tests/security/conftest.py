"""Fixtures for the security tests: a CA with one certificate per role, a foreign CA, and a real
gRPC server on 127.0.0.1 that serves every method of our services behind the role interceptor."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import api
from api import tls
from cluster.auth import RoleInterceptor


@dataclass(frozen=True)
class Method:
    """One RPC of a registered service, as its descriptor declares it."""

    full_name: str  # '/coolbeans.api.v1.JobStateMachine/Put'
    service: str
    name: str
    request_streaming: bool
    response_streaming: bool


def registered_methods() -> list[Method]:
    """Every method of every service in api's generated *_pb2 modules and the health service."""
    modules = [health_pb2]
    for info in pkgutil.iter_modules(api.__path__):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(f"api.{info.name}"))
    methods = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                methods.append(
                    Method(
                        f"/{service.full_name}/{m.name}",
                        service.full_name,
                        m.name,
                        m.client_streaming,
                        m.server_streaming,
                    )
                )
    return methods


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate 'node-1' and one client certificate per role, named by role."""
    directory = tmp_path_factory.mktemp("security") / "tls"
    tls.init_ca(directory)
    tls.issue_certificate(directory, "node", "node-1")
    for role in tls.ROLES:
        tls.issue_certificate(directory, role, role)
    return directory


@pytest.fixture(scope="session")
def foreign_tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA with an admin certificate: same names, wrong signer."""
    directory = tmp_path_factory.mktemp("foreign") / "tls"
    tls.init_ca(directory)
    tls.issue_certificate(directory, "admin", "admin")
    return directory


@dataclass
class Recorder:
    """(caller's certificate name, method) of every handler that actually ran: a refused call
    must never reach one."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, context: grpc.ServicerContext, method: str) -> None:
        names = context.auth_context().get("x509_common_name", [b""])
        with self.lock:
            self.calls.append((names[0].decode(), method))

    def methods(self) -> set[str]:
        with self.lock:
            return {method for _, method in self.calls}


def echo_handlers(recorder: Recorder, methods: list[Method]) -> list[grpc.GenericRpcHandler]:
    """Generic handlers that answer every method with an empty message (valid for any proto
    message) and record that they ran."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in methods:
        by_service.setdefault(method.service, {})[method.name] = _echo(recorder, method)
    return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]


def _echo(recorder: Recorder, method: Method) -> grpc.RpcMethodHandler:
    def unary(request: object, context: grpc.ServicerContext) -> bytes:
        recorder.record(context, method.full_name)
        return b""

    def stream(request: object, context: grpc.ServicerContext) -> Iterator[bytes]:
        recorder.record(context, method.full_name)
        yield b""

    if method.request_streaming and method.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if method.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if method.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


@dataclass
class Server:
    address: str
    recorder: Recorder


def start_server(
    credentials: grpc.ServerCredentials | None, tls_dir: Path
) -> tuple[grpc.Server, Server]:
    """Our services (echo handlers) and the real health service behind the role interceptor."""
    recorder = Recorder()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[RoleInterceptor.from_tls_dir(tls_dir)],
    )
    ours = [m for m in registered_methods() if m.service != "grpc.health.v1.Health"]
    server.add_generic_rpc_handlers(echo_handlers(recorder, ours))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, Server(f"127.0.0.1:{port}", recorder)


@pytest.fixture(scope="module")
def mtls_server(tls_dir: Path) -> Iterator[Server]:
    server, info = start_server(tls.server_credentials(tls_dir, "node-1"), tls_dir)
    try:
        yield info
    finally:
        server.stop(grace=None)


def call(channel: grpc.Channel, method: Method, timeout_s: float = 10.0) -> None:
    """Call ``method`` with an empty request and read its first response; raises RpcError."""
    if method.request_streaming:
        request: object = iter([b""])
    else:
        request = b""
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.request_streaming, method.response_streaming)]
    result = kind(method.full_name)(request, timeout=timeout_s)
    if method.response_streaming:
        try:
            next(iter(result))
        finally:
            result.cancel()
