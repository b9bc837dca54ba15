"""``beanraft certs init|issue``: create the cluster's CA and role certificates.

    beanraft certs init [--dir DIR]
    beanraft certs issue --role ROLE --name NAME [--dir DIR] [--host H ...]

ROLE is one of admin, node, proxy, worker, viewer.

The default directory is ``./data/tls``, the one ``beanraft up`` uses, so a viewer certificate
for a running local cluster is one command: ``beanraft certs issue --role viewer --name alice``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.tls import CERT_VALID_DAYS, DEFAULT_HOSTS, ROLES, TlsError, init_ca, issue_certificate

DEFAULT_DIR = Path("data/tls")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``init`` and ``issue`` to ``beanraft certs``."""
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create a new CA (refuses to replace an existing one)")
    _add_dir(init)
    issue = actions.add_parser("issue", help="issue a certificate for one role and name")
    _add_dir(issue)
    issue.add_argument("--role", required=True, choices=ROLES, help="the role, put in the OU")
    issue.add_argument("--name", required=True, help="the identity (CN); files NAME.crt, NAME.key")
    issue.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="H",
        help="an IP address or DNS name the certificate is valid for (repeat; default: "
        f"{' '.join(DEFAULT_HOSTS)})",
    )
    issue.add_argument(
        "--valid-days",
        type=int,
        default=CERT_VALID_DAYS,
        help="lifetime in days (default %(default)s)",
    )


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="the TLS directory (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; a bad argument or file prints what to do and returns 1."""
    try:
        if args.certs_action == "init":
            init_ca(args.dir)
            print(f"created a CA in {args.dir} (ca.crt, and ca.key: keep it secret)")
            return 0
        hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
        cert_path, key_path = issue_certificate(
            args.dir, args.role, args.name, hosts, valid_days=args.valid_days
        )
    except TlsError as exc:
        print(f"beanraft certs: {exc}", file=sys.stderr)
        return 1
    print(f"issued {cert_path} and {key_path} (role {args.role}, hosts {', '.join(hosts)})")
    return 0
