"""``beanraft node``: run one cluster node.

Security by default: gRPC needs ``--tls-dir`` (mTLS, roles from certificate OUs) and the Raft
transport needs ``--cluster-secret-file`` (pysyncobj authenticates and encrypts every message
with it before unpickling anything). ``--insecure`` runs plaintext gRPC for development and says
so loudly; without a secret file it also leaves Raft unauthenticated, bound to the given
address only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import structlog

from cluster.durability import POLICIES
from cluster.node import NodeConfig

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-id", required=True, help="this node's id (unique, e.g. 1)")
    parser.add_argument("--data-dir", required=True, type=Path, help="journal and dump file")
    parser.add_argument("--raft-addr", required=True, help="HOST:PORT for Raft (bound exactly)")
    parser.add_argument("--grpc-addr", required=True, help="HOST:PORT for the gRPC API")
    parser.add_argument("--peers", default="", help="the other members' Raft addresses, A,B")
    parser.add_argument("--join", help="gRPC address of a member: ask to be added, then start")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--tls-dir", type=Path, help="ca.crt and node-ID.crt/.key (mTLS)")
    security.add_argument("--insecure", action="store_true", help="plaintext gRPC (development)")
    parser.add_argument("--cluster-secret-file", type=Path, help="shared Raft secret")
    parser.add_argument("--fsync", choices=POLICIES, default="batch", help="journal fsync policy")
    parser.add_argument("--metrics-addr", help="HOST:PORT for Prometheus metrics (default off)")
    parser.add_argument("--max-job-size", type=int, default=65535, help="bytes (beanstalkd -z)")


class _ResendNoise(logging.Filter):
    """pysyncobj logs CRITICAL "truncating already-applied log entries" each time a follower
    receives entries it already holds. Its leader used to re-send pipelined entries on every
    proposal, and under load the line repeated hundreds of times a second; cluster/appends.py
    stopped those re-sends, but any other path that repeats entries (a leader's retry after a
    refusal) would flood the log the same way. Let one through a minute, counting the rest, so
    that a real divergence (which pysyncobj reports with the same words) still shows."""

    def __init__(self) -> None:
        super().__init__()
        self._last_s = -60.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "truncating already-applied" not in str(record.msg):
            return True
        now_s = time.monotonic()
        if now_s - self._last_s < 60.0:
            self._suppressed += 1
            return False
        self._last_s = now_s
        record.msg = f"{record.msg} ({self._suppressed} similar lines suppressed)"
        self._suppressed = 0
        return True


def configure_logging() -> None:
    # pysyncobj logs through the standard library: same stream, key=value like structlog.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="timestamp=%(asctime)s level=%(levelname)s logger=%(name)s event=%(message)r",
    )
    logging.getLogger("pysyncobj.syncobj").addFilter(_ResendNoise())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def read_secret(path: Path | None, insecure: bool) -> str | None:
    """The cluster secret, or None under --insecure; raise SystemExit with advice otherwise."""
    if path is None:
        if insecure:
            return None
        raise SystemExit(
            "beanraft node: refusing to start without --cluster-secret-file: the Raft port would "
            "accept unauthenticated pickles (remote code execution). Create one with "
            "`head -c 32 /dev/urandom | base64 > cluster.secret` (the same file on every node), "
            "or pass --insecure for local development only."
        )
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(
            f"beanraft node: cannot read --cluster-secret-file {path}: {exc}"
        ) from None
    if len(secret) < 16:
        raise SystemExit(f"beanraft node: the secret in {path} is shorter than 16 characters")
    return secret


def run(args: argparse.Namespace) -> int:
    from cluster import gc_policy
    from cluster.server import ServerOptions, run_node

    configure_logging()
    gc_policy.install()
    if args.tls_dir is None and not args.insecure:
        raise SystemExit(
            "beanraft node: give --tls-dir DIR (mTLS: create it with `beanraft certs init` and "
            "`beanraft certs issue --role node --name node-ID`) or --insecure for development"
        )
    secret = read_secret(args.cluster_secret_file, args.insecure)
    if args.insecure:
        log.warning(
            "INSECURE MODE: gRPC is plaintext with no authentication; anyone who can reach "
            f"{args.grpc_addr} can read and change every job. Never use this outside development.",
            raft_authenticated=secret is not None,
        )
    config = NodeConfig(
        node_id=args.node_id,
        data_dir=args.data_dir,
        raft_addr=args.raft_addr,
        grpc_addr=args.grpc_addr,
        peers=[p for p in args.peers.split(",") if p and p != args.raft_addr],
        secret=secret,
        fsync=args.fsync,
        max_job_size=args.max_job_size,
    )
    options = ServerOptions(args.tls_dir, args.metrics_addr, args.join)
    return asyncio.run(run_node(config, options))
