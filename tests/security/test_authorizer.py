"""cluster.auth's decision on its own: certificates the TLS layer cannot be made to pass in a
test (expired after the handshake, no role, several roles, a foreign signer) still get the
right status and a message that says what was wrong."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api import tls
from cluster.auth import METHOD_ROLES, Authorizer

PUT = "/coolbeans.api.v1.JobStateMachine/Put"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _pem(path: Path) -> bytes:
    return path.read_bytes()


def _context(cert_pem: bytes) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert_pem]}


def _signed_by_ca(tls_dir: Path, units: list[str], cn: str = "odd") -> bytes:
    """A certificate with arbitrary OUs, as an operator with openssl might make one."""
    ca_key = serialization.load_pem_private_key(_pem(tls_dir / "ca.key"), password=None)
    ca = x509.load_pem_x509_certificate(_pem(tls_dir / "ca.crt"))
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def authorizer(tls_dir: Path) -> Authorizer:
    # The real clock: the session's certificates may be issued minutes after NOW was taken
    # (at import), and a clock stuck there would find them not yet valid.
    return Authorizer(
        ca_pem=_pem(tls_dir / "ca.crt"), clock=lambda: datetime.datetime.now(datetime.UTC)
    )


def test_no_certificate_in_the_context_is_unauthenticated(authorizer: Authorizer) -> None:
    denial = authorizer.check(PUT, {"transport_security_type": [b"insecure"]})
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a verified client certificate" in denial.message


def test_garbage_in_place_of_a_certificate_is_unauthenticated(authorizer: Authorizer) -> None:
    denial = authorizer.check(PUT, _context(b"-----BEGIN CERTIFICATE-----\nxx\n"))
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
    assert denial.message == "the client certificate could not be parsed"


def test_expired_certificate_is_unauthenticated_with_its_expiry(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls.init_ca(directory)
    start = NOW - datetime.timedelta(days=30)
    tls.issue_certificate(directory, "admin", "old", not_valid_before=start, valid_days=10)
    expiry = start + datetime.timedelta(days=10)
    authorizer = Authorizer(ca_pem=_pem(directory / "ca.crt"), clock=lambda: NOW)
    denial = authorizer.check(PUT, _context(_pem(directory / "old.crt")))
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
    assert denial.message == (
        f"client certificate 'old' expired at {expiry:%Y-%m-%d %H:%M:%S} UTC: "
        "issue a new one with `beanraft certs issue`"
    )


def test_certificate_from_another_ca_is_unauthenticated(
    authorizer: Authorizer, foreign_tls_dir: Path
) -> None:
    denial = authorizer.check(PUT, _context(_pem(foreign_tls_dir / "admin.crt")))
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
    assert "was not signed by this cluster's CA" in denial.message


def test_certificate_without_a_role_is_denied_everything(
    authorizer: Authorizer, tls_dir: Path
) -> None:
    pem = _signed_by_ca(tls_dir, ["operators"])
    for method in METHOD_ROLES:
        denial = authorizer.check(method, _context(pem))
        assert denial is not None and denial.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial.message == (
        "client certificate 'odd' has no beanraft role in its OU (operators): "
        "it needs exactly one of admin, node, proxy, worker, viewer"
    )


def test_certificate_with_two_roles_is_denied_everything(
    authorizer: Authorizer, tls_dir: Path
) -> None:
    denial = authorizer.check(PUT, _context(_signed_by_ca(tls_dir, ["viewer", "admin"])))
    assert denial is not None and denial.code == grpc.StatusCode.PERMISSION_DENIED


def test_role_in_ou_is_matched_without_regard_to_case(
    authorizer: Authorizer, tls_dir: Path
) -> None:
    assert authorizer.check(PUT, _context(_signed_by_ca(tls_dir, ["Proxy"]))) is None


def test_wrong_role_is_denied_naming_the_role_and_the_method(
    authorizer: Authorizer, tls_dir: Path
) -> None:
    denial = authorizer.check(PUT, _context(_pem(tls_dir / "viewer.crt")))
    assert denial is not None and denial.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial.message == (
        f"role viewer is not allowed to perform operation put (certificate 'viewer', {PUT}); "
        "allowed roles: admin, node, proxy, worker"
    )
