"""``beanraft proxy``: serve the beanstalkd protocol in front of a cluster, or standalone.

    beanraft proxy --listen 127.0.0.1:11300 --standalone
    beanraft proxy --listen 127.0.0.1:11300 --cluster 127.0.0.1:7001,127.0.0.1:7002 --insecure

Prints one line ``listening HOST:PORT`` (or ``listening unix:PATH``) on stdout once it
accepts connections (``--listen`` with port 0 picks a free port). SIGUSR1 turns drain mode
on; SIGTERM and SIGINT stop it cleanly (the cluster releases its clients' jobs at once).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from jobqueue.interface import JobQueue
from proxy.protocol import JOB_SIZE_DEFAULT, JOB_SIZE_LIMIT
from proxy.server import LEASE_MS_DEFAULT, ProxyServer, split_host_port

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:11300", help="HOST:PORT or unix:PATH to serve on"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--standalone", action="store_true", help="the queue in-process, no Raft")
    mode.add_argument("--cluster", help="comma-separated gRPC addresses of cluster nodes")
    parser.add_argument(
        "--tls-dir", type=Path, help="directory with ca.crt and the certificate named by --tls-name"
    )
    parser.add_argument("--tls-name", default="proxy", help="certificate name in --tls-dir")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (development)")
    parser.add_argument(
        "--max-job-size", type=int, default=JOB_SIZE_DEFAULT, help="largest job body, bytes"
    )
    parser.add_argument(
        "--lease-ms",
        type=int,
        default=LEASE_MS_DEFAULT,
        help="how long the cluster keeps this proxy's sessions without a renewal, ms",
    )
    parser.add_argument("--metrics-addr", help="HOST:PORT for Prometheus metrics (default off)")


def _make_queue(args: argparse.Namespace) -> JobQueue:
    if args.standalone:
        from jobqueue.local import LocalQueue
        from statemachine.machine import MachineConfig

        return LocalQueue(MachineConfig(max_job_size=args.max_job_size))
    if args.tls_dir is None and not args.insecure:
        raise ValueError("--cluster needs --tls-dir DIR (mTLS) or --insecure (plaintext)")
    if args.insecure:
        log.warning("insecure_grpc", detail="talking to the cluster WITHOUT TLS: development only")
    from api.client import RemoteQueue  # imported lazily: grpc is heavy

    addresses = [a.strip() for a in args.cluster.split(",") if a.strip()]
    tls_dir = None if args.insecure else args.tls_dir
    if tls_dir is not None:
        _refuse_a_refused_certificate(addresses, tls_dir, args.tls_name)
    queue: JobQueue = RemoteQueue(addresses, tls_dir, tls_name=args.tls_name)
    return queue


def _refuse_a_refused_certificate(addresses: list[str], tls_dir: Path, name: str) -> None:
    """Stop at once, saying why, when a node refuses our certificate: gRPC would only report
    UNAVAILABLE and the proxy would wait for the cluster until it gave up. Nodes that are not
    listening yet are not a certificate problem (``beanraft up`` starts us beside them)."""
    from cluster.tls_diagnose import explain_refusal

    for address in addresses:
        reason = explain_refusal(address, tls_dir, name)
        if reason is not None:
            raise ValueError(f"the cluster refuses our certificate ({name}): {reason}")


async def _serve(args: argparse.Namespace) -> None:
    if not args.listen.startswith("unix:"):
        split_host_port(args.listen)  # refuse a bad address before connecting to anything
    metrics = None
    if args.metrics_addr:
        from proxy.metrics import ProxyMetrics

        metrics = ProxyMetrics()
        metrics.serve(args.metrics_addr)
    server = ProxyServer(
        _make_queue(args), max_job_size=args.max_job_size, lease_ms=args.lease_ms, metrics=metrics
    )
    print(f"listening {await server.start(args.listen)}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, server.drain)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("proxy_stopping", proxy_id=server.proxy_id)
    await server.stop()


def run(args: argparse.Namespace) -> int:
    # Logs go to stderr: stdout carries only the "listening" line that scripts wait for.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if not 0 <= args.max_job_size <= JOB_SIZE_LIMIT:
        print(f"--max-job-size must be 0..{JOB_SIZE_LIMIT}", file=sys.stderr)
        return 2
    if args.lease_ms < 300:
        print("--lease-ms must be at least 300 (renewed every quarter of it)", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except ValueError as error:
        print(f"beanraft proxy: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"beanraft proxy: cannot listen on {args.listen}: {error}", file=sys.stderr)
        return 1
    return 0
