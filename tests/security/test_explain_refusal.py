"""cluster.explain_refusal: turning gRPC's bare "Socket closed" into the reason, against
real gRPC servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from api import tls
from cluster.tls_diagnose import explain_refusal


def _serve(credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def ours(tls_dir: Path) -> Iterator[str]:
    server, address = _serve(tls.server_credentials(tls_dir, "node-1"))
    yield address
    server.stop(grace=None)


def test_an_accepted_client_gets_no_explanation(ours: str, tls_dir: Path) -> None:
    assert explain_refusal(ours, tls_dir, "viewer") is None


def test_a_server_that_trusts_another_ca_for_clients_is_explained(
    tls_dir: Path, foreign_tls_dir: Path
) -> None:
    # The server's own certificate is from our CA, but it verifies clients against another CA.
    _, cert_pem, key_pem = tls.load_identity(tls_dir, "node-1")
    creds = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=(foreign_tls_dir / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server, address = _serve(creds)
    try:
        reason = explain_refusal(address, tls_dir, "admin")
    finally:
        server.stop(grace=None)
    assert reason == (
        f"the server at {address} refused our client certificate admin.crt after the handshake: "
        "it trusts another CA (or requires a certificate we do not have)"
    )


def test_a_server_from_another_ca_is_explained(ours: str, foreign_tls_dir: Path) -> None:
    reason = explain_refusal(ours, foreign_tls_dir, "admin")
    assert reason is not None
    assert reason.startswith(f"the server at {ours} presented a certificate that ")
    assert "use different CAs" in reason


def test_an_expired_client_certificate_is_explained_before_dialing(
    ours: str, tls_dir: Path
) -> None:
    import datetime

    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    tls.issue_certificate(tls_dir, "viewer", "stale", not_valid_before=start, valid_days=2)
    reason = explain_refusal(ours, tls_dir, "stale")
    assert reason is not None and "stale.crt expired on" in reason


def test_a_plaintext_server_is_explained(tls_dir: Path) -> None:
    server, address = _serve(None)
    try:
        reason = explain_refusal(address, tls_dir, "admin")
    finally:
        server.stop(grace=None)
    assert reason == f"the server at {address} does not speak TLS (was it started with --insecure?)"


def test_nothing_listening_is_not_a_tls_problem(tls_dir: Path) -> None:
    from harness import ports

    assert explain_refusal(ports.addr(ports.port()), tls_dir, "admin") is None
