"""The same role check on a grpc.aio server (a node may serve with asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from api import tls
from cluster.auth import AioRoleInterceptor

PUT = "/coolbeans.api.v1.JobStateMachine/Put"
STREAM = "/coolbeans.api.v1.JobStateMachine/StreamWakeups"
WRITER = "/coolbeans.api.v1.JobStateMachine/StreamReserveUpdates"
JOIN = "/coolbeans.api.v1.Cluster/Join"


async def _put(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return b""


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # type: ignore[type-arg]
    yield b""
    yield b""


async def _writer(request: bytes, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
    # The other streaming style: a coroutine that writes, instead of an async generator.
    await context.write(b"")
    await context.write(b"")


async def _join(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return b""


async def _serve_and_call(tls_dir: Path, role: str) -> dict[str, grpc.StatusCode]:
    server = grpc.aio.server(interceptors=[AioRoleInterceptor.from_tls_dir(tls_dir)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "coolbeans.api.v1.JobStateMachine",
                {
                    "Put": grpc.unary_unary_rpc_method_handler(_put),
                    "StreamWakeups": grpc.unary_stream_rpc_method_handler(_stream),
                    "StreamReserveUpdates": grpc.unary_stream_rpc_method_handler(_writer),
                },
            ),
            grpc.method_handlers_generic_handler(
                "coolbeans.api.v1.Cluster", {"Join": grpc.unary_unary_rpc_method_handler(_join)}
            ),
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(tls_dir, "node-1"))
    await server.start()
    codes: dict[str, grpc.StatusCode] = {}
    try:
        creds = tls.channel_credentials(tls_dir, role)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            for method in (PUT, JOIN, "/coolbeans.api.v1.Cluster/Unknown"):
                try:
                    await channel.unary_unary(method)(b"", timeout=10)
                    codes[method] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[method] = exc.code()
            for stream in (STREAM, WRITER):
                try:
                    responses = [r async for r in channel.unary_stream(stream)(b"", timeout=10)]
                    assert responses == [b"", b""]
                    codes[stream] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[stream] = exc.code()
    finally:
        await server.stop(grace=None)
    return codes


@pytest.mark.parametrize(
    ("role", "put", "join"),
    [
        ("admin", grpc.StatusCode.OK, grpc.StatusCode.OK),
        ("proxy", grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED),
        ("viewer", grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_aio_server_enforces_roles_on_unary_and_streaming_calls(
    tls_dir: Path, role: str, put: grpc.StatusCode, join: grpc.StatusCode
) -> None:
    codes = asyncio.run(_serve_and_call(tls_dir, role))
    assert codes[PUT] == put
    assert codes[STREAM] == put  # the wake-up streams are queue calls like Put
    assert codes[WRITER] == put
    assert codes[JOIN] == join
    assert codes["/coolbeans.api.v1.Cluster/Unknown"] == grpc.StatusCode.PERMISSION_DENIED
