"""Certificates and mTLS credentials for the cluster's gRPC API.

Theory of operation: one directory holds a private CA (``ca.crt``, ``ca.key``) and, for each
identity, ``<name>.crt`` and ``<name>.key``. Every certificate names its *role* in the subject's
organizational unit (OU) and its *name* in the common name (CN); ``cluster.auth`` reads the role
from the verified peer certificate and decides per RPC. Every leaf certificate carries both the
serverAuth and clientAuth usages, so a node's certificate serves its gRPC port and also lets it
call other nodes (forwarding to the leader, joining).

Rules (learned from joblet's holes, see the reference's section 3):
- The CA key is kept (mode 0600), so more certificates can be issued later without starting over.
- Every role has its own certificate; a certificate with an unknown role is never issued here and
  is denied everything by the interceptor.
- Keys are written with mode 0600 from the moment the file exists (no chmod race).
- A missing or broken file is reported with its path and the command that creates it.

Keys are ECDSA P-256: small, fast to generate (tests issue dozens) and accepted by BoringSSL.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobqueue.errors import BeanraftError

log = structlog.get_logger(__name__)

# admin: everything; node: a cluster member (everything, it forwards and joins);
# proxy and worker: the queue calls; viewer: reads only. See cluster.auth.METHOD_ROLES.
ROLES: tuple[str, ...] = ("admin", "node", "proxy", "worker", "viewer")
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 825
ORGANIZATION = "beanraft"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A little slack for clocks that differ between hosts.
_BACKDATE = datetime.timedelta(minutes=5)


class TlsError(BeanraftError):
    """A certificate file is missing, unreadable or wrong; the message says which and what to do."""


def ca_paths(tls_dir: Path) -> tuple[Path, Path]:
    """The CA's certificate and key paths in ``tls_dir``."""
    return tls_dir / "ca.crt", tls_dir / "ca.key"


def identity_paths(tls_dir: Path, name: str) -> tuple[Path, Path]:
    """The certificate and key paths of identity ``name`` in ``tls_dir``."""
    return tls_dir / f"{name}.crt", tls_dir / f"{name}.key"


def init_ca(tls_dir: Path) -> None:
    """Create a new CA in ``tls_dir``; refuse if one is already there (it would orphan every
    certificate it signed)."""
    cert_path, key_path = ca_paths(tls_dir)
    for path in (cert_path, key_path):
        if path.exists():
            raise TlsError(
                f"{path} already exists: a CA is already set up in {tls_dir}; issue certificates "
                f"with `beanraft certs issue --dir {tls_dir} ...`, or delete the directory to "
                "start over (every certificate it signed stops working)"
            )
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "beanraft CA"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def issue_certificate(
    tls_dir: Path,
    role: str,
    name: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    valid_days: int = CERT_VALID_DAYS,
    not_valid_before: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue (or re-issue) ``<name>.crt`` and ``<name>.key`` signed by the CA in ``tls_dir``.

    The role goes in the subject's OU, the name in its CN, ``hosts`` (IP addresses or DNS names)
    in the subject alternative names. ``not_valid_before`` exists for tests of expiry.
    Returns (certificate path, key path).
    """
    if role not in ROLES:
        raise TlsError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if not _NAME_RE.match(name) or name == "ca":
        raise TlsError(
            f"bad certificate name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(it becomes a file name), and not 'ca'"
        )
    if valid_days <= 0:
        raise TlsError(f"valid_days must be positive, got {valid_days}")
    ca_cert, ca_key = _load_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_valid_before or datetime.datetime.now(datetime.UTC) - _BACKDATE
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = identity_paths(tls_dir, name)
    write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_credentials(tls_dir: Path, name: str) -> grpc.ServerCredentials:
    """mTLS credentials for a server identified as ``name``: clients must present a certificate
    signed by the same CA (the role check happens later, in ``cluster.auth``)."""
    ca_pem, cert_pem, key_pem = load_identity(tls_dir, name)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def channel_credentials(tls_dir: Path, name: str) -> grpc.ChannelCredentials:
    """mTLS credentials for a client identified as ``name`` (it also verifies the server)."""
    ca_pem, cert_pem, key_pem = load_identity(tls_dir, name)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def load_identity(tls_dir: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """Read and check (CA PEM, certificate PEM, key PEM) of ``name``: every file exists and
    parses, the certificate was signed by this CA, is valid now and matches the key."""
    ca_cert = _load_ca_cert(tls_dir)
    cert_path, key_path = identity_paths(tls_dir, name)
    issue_hint = f"create it with `beanraft certs issue --dir {tls_dir} --role ROLE --name {name}`"
    cert = _load_cert(cert_path, issue_hint)
    key = _load_key(key_path, issue_hint)
    _check_signed_by(cert, ca_cert, cert_path, issue_hint)
    _check_current(cert, cert_path, issue_hint)
    if cert.public_key() != key.public_key():
        raise TlsError(f"{key_path} does not belong to {cert_path}: {issue_hint}")
    if role_of(cert) not in ROLES:
        raise TlsError(f"{cert_path} names no known role in its OU: {issue_hint}")
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        _key_pem(key),
    )


def role_of(cert: x509.Certificate) -> str | None:
    """The role in the certificate's subject OU (case-insensitive), or None if it names none
    or more than one (an ambiguous certificate gets no role at all)."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    roles = {str(unit.value).strip().lower() for unit in units} & set(ROLES)
    return roles.pop() if len(roles) == 1 else None


def common_name_of(cert: x509.Certificate) -> str:
    """The certificate's CN, or '' if it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _ca_hint(tls_dir: Path) -> str:
    return f"create the CA with `beanraft certs init --dir {tls_dir}`"


def _load_ca_cert(tls_dir: Path) -> x509.Certificate:
    return _load_cert(ca_paths(tls_dir)[0], _ca_hint(tls_dir))


def _load_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _load_ca_cert(tls_dir)
    key_path = ca_paths(tls_dir)[1]
    if not key_path.exists():
        raise TlsError(
            f"{key_path} is missing: certificates can only be issued where the CA key is; "
            + _ca_hint(tls_dir)
        )
    return cert, _load_key(key_path, _ca_hint(tls_dir))


def _load_cert(path: Path, hint: str) -> x509.Certificate:
    data = _read(path, hint)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"{path} is not a PEM certificate ({exc}): {hint}") from exc


def _load_key(path: Path, hint: str) -> ec.EllipticCurvePrivateKey:
    data = _read(path, hint)
    _warn_if_readable_by_others(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{path} is not an unencrypted PEM private key ({exc}): {hint}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{path} is not an ECDSA key: {hint}")
    return key


def _read(path: Path, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path} is missing: {hint}") from None
    except OSError as exc:
        raise TlsError(f"cannot read {path} ({exc.strerror}): {hint}") from exc


def _warn_if_readable_by_others(path: Path) -> None:
    # A warning, not a refusal: secret stores often mount keys 0644 inside a private directory.
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "private key readable by others",
            path=str(path),
            mode=oct(mode),
            fix=f"chmod 600 {path}",
        )


def _check_signed_by(cert: x509.Certificate, ca: x509.Certificate, path: Path, hint: str) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise TlsError(f"{path} was not signed by this directory's CA: {hint}") from exc


def _check_current(cert: x509.Certificate, path: Path, hint: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise TlsError(f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: {hint}")
    if now < cert.not_valid_before_utc:
        raise TlsError(f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}")


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise TlsError("a certificate needs at least one host (an IP address or a DNS name)")
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so that it is never readable by others, not even for an instant: create
    a fresh file with mode 0600 and move it over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
