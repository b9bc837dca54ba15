"""``beanraft certs init|issue``: create the cluster's CA and role certificates.

    beanraft certs init [--dir DIR]
    beanraft certs issue --role ROLE --name NAME [--dir DIR] [--host H ...]
    beanraft certs list [--dir DIR]

ROLE is one of admin, node, proxy, worker, viewer.

The default directory is ``./data/tls``, the one ``beanraft up`` uses, so a viewer certificate
for a running local cluster is one command: ``beanraft certs issue --role viewer --name alice``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from api.tls import (
    CERT_VALID_DAYS,
    DEFAULT_HOSTS,
    ROLES,
    TlsError,
    init_ca,
    issue_certificate,
    load_identity,
    role_of,
)

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
        "--force", action="store_true", help="replace NAME.crt and NAME.key if they exist"
    )
    issue.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="H",
        help="an IP address or DNS name the certificate is valid for (repeat; default: "
        f"{' '.join(DEFAULT_HOSTS)})",
    )
    listing = actions.add_parser("list", help="every certificate: role, expiry, hosts, problems")
    _add_dir(listing)
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
        if args.certs_action == "list":
            return _list(args.dir)
        if args.certs_action == "init":
            init_ca(args.dir)
            print(f"created a CA in {args.dir} (ca.crt, and ca.key: keep it secret)")
            return 0
        hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
        existing = args.dir / f"{args.name}.crt"
        if existing.exists() and not args.force:
            raise TlsError(
                f"{existing} exists ({_describe(existing)}): refusing to overwrite it; pass "
                "--force to replace it, or choose another --name"
            )
        cert_path, key_path = issue_certificate(
            args.dir, args.role, args.name, hosts, valid_days=args.valid_days
        )
    except TlsError as exc:
        print(f"beanraft certs: {exc}", file=sys.stderr)
        return 1
    print(f"issued {cert_path} and {key_path} (role {args.role}, hosts {', '.join(hosts)})")
    return 0


def _describe(path: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return "not a readable certificate"
    return f"role {role_of(cert) or 'none'}, expires {cert.not_valid_after_utc:%Y-%m-%d}"


def _list(tls_dir: Path) -> int:
    """Print one line per certificate; return 1 if any has a problem (expired, foreign, ...)."""
    paths = sorted(p for p in tls_dir.glob("*.crt") if p.name != "ca.crt")
    if not paths:
        raise TlsError(f"no certificates in {tls_dir}: create them with `beanraft certs issue`")
    print(f"{'name':<16} {'role':<8} {'expires':<11} {'hosts':<28} status")
    problems = 0
    for path in paths:
        name = path.stem
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            print(f"{name:<16} {'?':<8} {'?':<11} {'?':<28} not a PEM certificate")
            problems += 1
            continue
        try:
            load_identity(tls_dir, name)
            status = "ok"
        except TlsError as exc:
            status, problems = (
                str(exc).split(": ")[0].replace(str(path), "certificate"),
                problems + 1,
            )
        hosts = ",".join(str(h) for h in _hosts(cert))
        expires = f"{cert.not_valid_after_utc:%Y-%m-%d}"
        print(f"{name:<16} {role_of(cert) or '-':<8} {expires:<11} {hosts:<28} {status}")
    return 1 if problems else 0


def _hosts(cert: x509.Certificate) -> list[object]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.IPAddress), *sans.get_values_for_type(x509.DNSName)]
