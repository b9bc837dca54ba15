"""`beanraft certs init|issue` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from api import tls


def _beanraft(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beanraft", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_certs_init_then_issue_a_viewer_with_extra_hosts(tmp_path: Path) -> None:
    assert _beanraft("certs", "init", cwd=tmp_path).returncode == 0
    done = _beanraft(
        "certs", "issue", "--role", "viewer", "--name", "alice", "--host", "10.0.0.5", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "data/tls/alice.crt").read_bytes())
    assert tls.role_of(cert) == "viewer" and tls.common_name_of(cert) == "alice"
    assert "role viewer, hosts 10.0.0.5" in done.stdout


def test_certs_init_twice_fails_and_says_how_to_issue_instead(tmp_path: Path) -> None:
    assert _beanraft("certs", "init", "--dir", "t", cwd=tmp_path).returncode == 0
    again = _beanraft("certs", "init", "--dir", "t", cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "beanraft certs issue --dir t" in again.stderr


def test_certs_issue_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    done = _beanraft("certs", "issue", "--role", "admin", "--name", "a", cwd=tmp_path)
    assert done.returncode == 1
    assert "run" not in done.stdout
    assert "beanraft certs init --dir data/tls" in done.stderr


def test_certs_issue_rejects_an_unknown_role(tmp_path: Path) -> None:
    done = _beanraft("certs", "issue", "--role", "root", "--name", "a", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice: 'root'" in done.stderr


def test_certs_list_shows_roles_and_expiry_and_flags_an_expired_certificate(tmp_path: Path) -> None:
    import datetime

    directory = tmp_path / "data/tls"
    tls.init_ca(directory)
    tls.issue_certificate(directory, "viewer", "alice", ["10.0.0.5"])
    listed = _beanraft("certs", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == [
        "alice", "viewer", _expiry(directory / "alice.crt"), "10.0.0.5", "ok"
    ]  # fmt: skip
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    tls.issue_certificate(directory, "worker", "old", not_valid_before=start, valid_days=2)
    listed = _beanraft("certs", "list", cwd=tmp_path)
    assert listed.returncode == 1
    assert f"certificate expired on {_expiry(directory / 'old.crt')}" in listed.stdout


def _expiry(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return f"{cert.not_valid_after_utc:%Y-%m-%d}"


def test_certs_issue_refuses_to_overwrite_a_certificate_without_force(tmp_path: Path) -> None:
    assert _beanraft("certs", "init", cwd=tmp_path).returncode == 0
    issue = ("certs", "issue", "--role", "proxy", "--name", "proxy")
    assert _beanraft(*issue, cwd=tmp_path).returncode == 0
    before = (tmp_path / "data/tls/proxy.crt").read_bytes()
    admin = _beanraft("certs", "issue", "--role", "admin", "--name", "proxy", cwd=tmp_path)
    assert admin.returncode == 1
    assert "proxy.crt exists (role proxy" in admin.stderr and "--force" in admin.stderr
    assert (tmp_path / "data/tls/proxy.crt").read_bytes() == before  # untouched
    forced = _beanraft(
        "certs", "issue", "--role", "admin", "--name", "proxy", "--force", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "data/tls/proxy.crt").read_bytes())
    assert tls.role_of(cert) == "admin"


def test_a_new_certificate_is_valid_from_a_few_minutes_ago(tmp_path: Path) -> None:
    import datetime

    tls.init_ca(tmp_path)
    cert_path, _ = tls.issue_certificate(tmp_path, "viewer", "v")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    backdated = datetime.datetime.now(datetime.UTC) - cert.not_valid_before_utc
    assert backdated >= datetime.timedelta(minutes=1)  # hosts' clocks may differ a little
