"""Benchmark: what the role check costs per RPC.

Run: ``python -m bench.auth_bench [--seconds 5] [--in-flight 64]``. It prints the machine and:

1. ``Authorizer.check`` alone (certificate already parsed and cached): microseconds per call.
2. A grpc.aio server on 127.0.0.1 with mTLS and a trivial unary handler, called by one client
   with --in-flight calls outstanding, without and then with ``AioRoleInterceptor``: calls per
   second, and the relative cost of the interceptor. Both runs use the same process and
   certificates; they alternate twice so that drift in machine load shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import grpc

from api import tls
from cluster.auth import AioRoleInterceptor, Authorizer

METHOD = "/coolbeans.api.v1.JobStateMachine/Put"


def machine() -> str:
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"grpcio {grpc.__version__}"
    )


def bench_check(tls_dir: Path, calls: int = 200_000) -> float:
    """Microseconds per Authorizer.check for an allowed call."""
    authorizer = Authorizer(ca_pem=(tls_dir / "ca.crt").read_bytes())
    context = {"x509_pem_cert": [(tls_dir / "proxy.crt").read_bytes()]}
    assert authorizer.check(METHOD, context) is None
    started = time.perf_counter()
    for _ in range(calls):
        authorizer.check(METHOD, context)
    return (time.perf_counter() - started) / calls * 1e6


async def _handler(request: bytes, context: object) -> bytes:
    return b""


async def bench_server(
    tls_dir: Path, with_interceptor: bool, seconds: float, in_flight: int
) -> float:
    """Calls per second through a real mTLS server."""
    interceptors = [AioRoleInterceptor.from_tls_dir(tls_dir)] if with_interceptor else []
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "coolbeans.api.v1.JobStateMachine",
                {"Put": grpc.unary_unary_rpc_method_handler(_handler)},
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(tls_dir, "node-1"))
    await server.start()
    done = 0
    try:
        creds = tls.channel_credentials(tls_dir, "proxy")
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            call = channel.unary_unary(METHOD)
            await call(b"")  # connect and handshake outside the timed part
            deadline = time.perf_counter() + seconds

            async def loop() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await call(b"")
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(in_flight)))
            elapsed = time.perf_counter() - started
    finally:
        await server.stop(grace=None)
    return done / elapsed


def _runs(rates: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tls_dir = Path(tmp) / "tls"
        tls.init_ca(tls_dir)
        tls.issue_certificate(tls_dir, "node", "node-1")
        tls.issue_certificate(tls_dir, "proxy", "proxy")
        print(f"machine: {machine()}")
        print(f"Authorizer.check: {bench_check(tls_dir):.2f} us per call")
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(2):
            for with_interceptor in (False, True):
                rate = asyncio.run(
                    bench_server(tls_dir, with_interceptor, args.seconds, args.in_flight)
                )
                rates[with_interceptor].append(rate)
        plain, checked = max(rates[False]), max(rates[True])
        print(f"mTLS unary calls/s, {args.in_flight} in flight, best of 2 x {args.seconds:.0f} s:")
        print(f"  without the interceptor: {plain:,.0f}  (runs: {_runs(rates[False])})")
        print(f"  with the interceptor:    {checked:,.0f}  (runs: {_runs(rates[True])})")
        print(f"  interceptor cost: {100 * (1 - checked / plain):.1f} % of throughput")


if __name__ == "__main__":
    main()
