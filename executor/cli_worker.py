"""``beanraft worker --beanstalkd HOST:PORT [--tubes default,...] [--concurrency N]
[--log-dir DIR] [--log-retention-days D] [--log-retention-gb G] [--cgroup-root PATH]
[--uid-range FIRST-LAST] [limits]``: run a worker pool on this host (as root). Every isolation
layer is on by default; the limits flags set the default a job gets when its spec leaves a limit
out, and the maximum a spec may ask for. Finished jobs' files in --log-dir are kept for
--log-retention-days and within --log-retention-gb (oldest jobs removed first)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

from executor import uids
from executor.cgroups import CgroupError
from executor.client import parse_address
from executor.jobfiles import default_log_dir
from executor.plan import WorkerPolicy
from executor.seccomp import SeccompError
from executor.worker import Worker, WorkerConfig

SECONDS_PER_DAY = 86400
BYTES_PER_GB = 1 << 30  # the flag says GB, as operators do; the bytes are GiB

_DEFAULTS = WorkerPolicy()
# (flag stem, WorkerPolicy field stem, unit, what it bounds)
_LIMIT_FLAGS = (
    ("memory-mb", "memory_mb", "MiB", "memory (cgroup)"),
    ("open-files", "open_files", "files", "open files (RLIMIT_NOFILE)"),
    ("file-size-mb", "file_size_mb", "MiB", "largest file written (RLIMIT_FSIZE)"),
    ("log-mb", "log_mb", "MiB", "stdout and stderr kept per attempt, each"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--beanstalkd",
        required=True,
        help="HOST:PORT of a proxy, a node's listener or beanstalkd; several, comma-separated, "
        "are tried in turn when one stops answering (a cluster's node listeners)",
    )
    parser.add_argument("--tubes", default="default", help="comma-separated tubes to watch")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    parser.add_argument("--log-dir", default=default_log_dir(), help="per-job logs and state")
    parser.add_argument(
        "--log-retention-days",
        type=float,
        default=7.0,
        help="remove a finished job's files this long after its last output (default %(default)s)",
    )
    parser.add_argument(
        "--log-retention-gb",
        type=float,
        default=10.0,
        help="then remove the oldest finished jobs while --log-dir holds more, GiB "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--cgroup-root", default="beanraft", help="cgroup subtree (relative to each hierarchy)"
    )
    parser.add_argument("--allow-root", action="store_true", help="allow specs with run_as_root")
    parser.add_argument("--grace", type=float, default=5.0, help="stop grace period, seconds")
    parser.add_argument(
        "--shutdown-grace", type=float, default=10.0, help="on SIGTERM, seconds to finish jobs"
    )
    first, last = uids.DEFAULT_UID_RANGE
    parser.add_argument(
        "--uid-range",
        default=f"{first}-{last}",
        help="host uids for jobs, one per slot, never two running jobs on one (%(default)s)",
    )
    for flag, field, unit, what in _LIMIT_FLAGS:
        for kind in ("default", "max"):
            value = getattr(_DEFAULTS, f"{kind}_{field}")
            parser.add_argument(
                f"--{kind}-{flag}",
                type=int,
                default=value,
                help=f"{kind} {what}, {unit} (default %(default)s)",
            )
    parser.add_argument(
        "--cluster",
        default="",
        help="gRPC addresses of cluster nodes to report jobs to (the job API), comma-separated",
    )
    parser.add_argument(
        "--tls-dir", type=Path, help="with --cluster: directory holding ca.crt and worker.crt"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="with --cluster: plaintext gRPC (development)"
    )
    parser.add_argument(
        "--log-listen",
        default="127.0.0.1:0",
        help="with --cluster: where nodes read job output from (HOST:PORT; port 0: any free)",
    )
    parser.add_argument("--metrics-addr", help="HOST:PORT for Prometheus metrics (default off)")
    parser.add_argument(
        "--no-seccomp",
        action="store_true",
        help="run jobs without the seccomp filter (only where the host cannot load it)",
    )


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("beanraft worker: must run as root (namespaces and cgroups)", file=sys.stderr)
        return 2
    try:
        addresses = tuple(parse_address(a.strip()) for a in args.beanstalkd.split(",") if a.strip())
        if not addresses:
            raise ValueError("expected HOST:PORT[,HOST:PORT...], got nothing")
    except ValueError as exc:
        print(f"beanraft worker: --beanstalkd: {exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("beanraft worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        uid_range = uids.parse_range(args.uid_range)
        policy = _policy(args)
        retention_days = _positive("--log-retention-days", args.log_retention_days)
        retention_gb = _positive("--log-retention-gb", args.log_retention_gb)
        cluster = tuple(addr.strip() for addr in args.cluster.split(",") if addr.strip())
        if cluster and args.tls_dir is None and not args.insecure:
            raise ValueError("--cluster needs --tls-dir DIR (with worker.crt) or --insecure")
    except ValueError as exc:
        print(f"beanraft worker: {exc}", file=sys.stderr)
        return 2
    config = WorkerConfig(
        addresses=addresses,
        tubes=tuple(t for t in args.tubes.split(",") if t),
        concurrency=args.concurrency,
        log_dir=args.log_dir,
        cgroup_root=args.cgroup_root.strip("/"),
        allow_root=args.allow_root,
        grace_ms=int(args.grace * 1000),
        shutdown_grace_ms=int(args.shutdown_grace * 1000),
        policy=policy,
        uid_range=uid_range,
        cluster=cluster,
        tls_dir=args.tls_dir,
        log_listen=args.log_listen,
        log_retention_s=retention_days * SECONDS_PER_DAY,
        log_retention_bytes=int(retention_gb * BYTES_PER_GB),
        metrics_addr=args.metrics_addr or "",
    )
    worker = Worker(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: worker.shutdown())
    try:
        return worker.run()
    except (CgroupError, SeccompError, uids.UidRangeExhausted) as exc:
        print(f"beanraft worker: {exc}", file=sys.stderr)
        return 1


def _policy(args: argparse.Namespace) -> WorkerPolicy:
    values: dict[str, int] = {}
    for flag, field, _unit, _what in _LIMIT_FLAGS:
        default, maximum = getattr(args, f"default_{field}"), getattr(args, f"max_{field}")
        if not 1 <= default <= maximum:
            raise ValueError(
                f"--default-{flag} {default} must be at least 1 and at most --max-{flag} {maximum}"
            )
        values[f"default_{field}"], values[f"max_{field}"] = default, maximum
    return WorkerPolicy(allow_root=args.allow_root, seccomp=not args.no_seccomp, **values)


def _positive(flag: str, value: float) -> float:
    """A retention bound of zero or less would remove every finished job's output at once;
    refuse it (and nan or infinity, which are not bounds) rather than guess."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} {value} must be a number above 0")
    return value
