"""``beanraft worker --beanstalkd HOST:PORT [--tubes default,...] [--concurrency N]
[--log-dir DIR] [--cgroup-root PATH]``: run a worker pool on this host (as root)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from executor.cgroups import CgroupError
from executor.client import parse_address
from executor.jobfiles import default_log_dir
from executor.worker import Worker, WorkerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beanstalkd", required=True, help="HOST:PORT of a proxy or beanstalkd")
    parser.add_argument("--tubes", default="default", help="comma-separated tubes to watch")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    parser.add_argument("--log-dir", default=default_log_dir(), help="per-job logs and state")
    parser.add_argument(
        "--cgroup-root", default="beanraft", help="cgroup subtree (relative to each hierarchy)"
    )
    parser.add_argument("--allow-root", action="store_true", help="allow specs with run_as_root")
    parser.add_argument("--grace", type=float, default=5.0, help="stop grace period, seconds")
    parser.add_argument(
        "--shutdown-grace", type=float, default=10.0, help="on SIGTERM, seconds to finish jobs"
    )


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("beanraft worker: must run as root (namespaces and cgroups)", file=sys.stderr)
        return 2
    try:
        host, port = parse_address(args.beanstalkd)
    except ValueError as exc:
        print(f"beanraft worker: --beanstalkd: {exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("beanraft worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    config = WorkerConfig(
        host=host,
        port=port,
        tubes=tuple(t for t in args.tubes.split(",") if t),
        concurrency=args.concurrency,
        log_dir=args.log_dir,
        cgroup_root=args.cgroup_root.strip("/"),
        allow_root=args.allow_root,
        grace_ms=int(args.grace * 1000),
        shutdown_grace_ms=int(args.shutdown_grace * 1000),
    )
    worker = Worker(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: worker.shutdown())
    try:
        return worker.run()
    except CgroupError as exc:
        print(f"beanraft worker: {exc}", file=sys.stderr)
        return 1
