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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from cluster.dumpfile import DamagedDump
from cluster.durability import POLICIES
from cluster.journal import DamagedJournal
from cluster.node import COMPACT_AFTER_ENTRIES, NodeConfig

log = structlog.get_logger(__name__)
EXIT_DAMAGED = 3  # the data directory failed its checks (sysexits has no better fit)


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
    parser.add_argument(
        "--compact-after-entries",
        type=int,
        default=COMPACT_AFTER_ENTRIES,
        help="write a dump and cut the log once it holds this many entries (etcd's "
        "--snapshot-count)",
    )


def configure_logging() -> None:
    # pysyncobj logs through the standard library: same stream, key=value like structlog.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="timestamp=%(asctime)s level=%(levelname)s logger=%(name)s event=%(message)r",
    )
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


def run(args: argparse.Namespace, extras: Sequence[Any] = ()) -> int:
    """Run the node; ``extras`` are services started in its loop once it serves
    (``cluster.server.Extra``: the composition root's beanstalkd listener)."""
    from cluster import gc_policy
    from cluster.server import AddressInUse, ServerOptions, run_node

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
        log_compaction_min_entries=max(2, args.compact_after_entries),
    )
    options = ServerOptions(args.tls_dir, args.metrics_addr, args.join)
    try:
        return asyncio.run(run_node(config, options, extras))
    except AddressInUse as exc:
        log.error("refusing to start", reason=str(exc))
        print(f"beanraft node: {exc}", file=sys.stderr)
        return 1
    except (DamagedJournal, DamagedDump) as exc:
        log.error(
            "refusing to start: this node's data cannot be trusted, and serving it could "
            "spread damage. Move the data directory aside and start the node again with an "
            "empty one and --join (it copies the state from the cluster), or restore a snapshot",
            data_dir=str(args.data_dir),
            damage=str(exc),
        )
        return EXIT_DAMAGED
