"""api.tls: the CA and certificates on disk, and the errors for missing or wrong files."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api import tls


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    tls.init_ca(directory)
    return directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_a_p256_ca_with_a_private_key_only_the_owner_can_read(ca_dir: Path) -> None:
    ca = _cert(ca_dir / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600


def test_init_refuses_to_replace_an_existing_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(tls.TlsError, match="already exists"):
        tls.init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before


def test_issued_certificate_carries_role_in_ou_name_in_cn_and_hosts_in_sans(ca_dir: Path) -> None:
    cert_path, key_path = tls.issue_certificate(ca_dir, "proxy", "proxy-a", ["10.1.2.3", "q.local"])
    cert = _cert(cert_path)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["proxy"]
    assert tls.common_name_of(cert) == "proxy-a" and tls.role_of(cert) == "proxy"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert sans.get_values_for_type(x509.DNSName) == ["q.local"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.crt"))
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_default_hosts_are_loopback_only(ca_dir: Path) -> None:
    cert_path, _ = tls.issue_certificate(ca_dir, "node", "node-1")
    sans = _cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


@pytest.mark.parametrize("role", ["root", "Admin ", ""])
def test_issuing_an_unknown_role_is_refused(ca_dir: Path, role: str) -> None:
    with pytest.raises(tls.TlsError, match="unknown role"):
        tls.issue_certificate(ca_dir, role, "x")


@pytest.mark.parametrize("name", ["../evil", "ca", "", "a b", "x" * 65])
def test_a_name_that_is_not_a_safe_file_name_is_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(tls.TlsError, match="bad certificate name"):
        tls.issue_certificate(ca_dir, "admin", name)


def test_issuing_without_a_ca_says_to_run_certs_init(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError) as caught:
        tls.issue_certificate(tmp_path, "admin", "admin")
    assert str(caught.value) == (
        f"{tmp_path}/ca.crt is missing: create the CA with `beanraft certs init --dir {tmp_path}`"
    )


def test_missing_certificate_error_names_the_file_and_the_command(ca_dir: Path) -> None:
    with pytest.raises(tls.TlsError) as caught:
        tls.server_credentials(ca_dir, "node-7")
    assert str(caught.value) == (
        f"{ca_dir}/node-7.crt is missing: create it with "
        f"`beanraft certs issue --dir {ca_dir} --role ROLE --name node-7`"
    )


def test_a_garbled_certificate_is_reported_as_not_pem(ca_dir: Path) -> None:
    tls.issue_certificate(ca_dir, "admin", "admin")
    (ca_dir / "admin.crt").write_text("not a certificate")
    with pytest.raises(tls.TlsError, match=r"admin\.crt is not a PEM certificate"):
        tls.channel_credentials(ca_dir, "admin")


def test_a_key_from_another_certificate_is_reported(ca_dir: Path) -> None:
    tls.issue_certificate(ca_dir, "admin", "admin")
    tls.issue_certificate(ca_dir, "viewer", "viewer")
    (ca_dir / "admin.key").write_bytes((ca_dir / "viewer.key").read_bytes())
    with pytest.raises(tls.TlsError, match=r"admin\.key does not belong to"):
        tls.channel_credentials(ca_dir, "admin")


def test_a_certificate_signed_by_another_ca_is_reported(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.init_ca(other)
    tls.issue_certificate(other, "admin", "admin")
    for suffix in (".crt", ".key"):
        (ca_dir / f"admin{suffix}").write_bytes((other / f"admin{suffix}").read_bytes())
    with pytest.raises(tls.TlsError, match="was not signed by this directory's CA"):
        tls.server_credentials(ca_dir, "admin")


def test_reissuing_replaces_the_pair_and_both_still_match(ca_dir: Path) -> None:
    tls.issue_certificate(ca_dir, "worker", "w")
    first = (ca_dir / "w.crt").read_bytes()
    tls.issue_certificate(ca_dir, "worker", "w")
    assert (ca_dir / "w.crt").read_bytes() != first
    assert len(tls.load_identity(ca_dir, "w")) == 3


def test_a_private_key_readable_by_others_is_warned_about(ca_dir: Path) -> None:
    from structlog.testing import capture_logs

    tls.issue_certificate(ca_dir, "admin", "admin")
    (ca_dir / "admin.key").chmod(0o644)
    with capture_logs() as logs:
        tls.channel_credentials(ca_dir, "admin")
    assert [e["event"] for e in logs] == ["private key readable by others"]
    assert logs[0]["fix"] == f"chmod 600 {ca_dir}/admin.key"
    (ca_dir / "admin.key").chmod(0o600)
    with capture_logs() as logs:
        tls.channel_credentials(ca_dir, "admin")
    assert logs == []
