"""``beanraft proxy`` refuses bad flags with a message that says what to do."""

from __future__ import annotations

import socket
import subprocess
import sys

from proxyproc import REPO


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beanraft", "proxy", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cluster_without_tls_or_insecure_is_refused_with_advice():
    result = run_proxy("--cluster", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--tls-dir DIR (mTLS) or --insecure" in result.stderr


def test_standalone_and_cluster_together_are_refused():
    result = run_proxy("--standalone", "--cluster", "127.0.0.1:1")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_a_busy_listen_address_is_reported():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_proxy("--standalone", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_bad_listen_address_and_limits_are_refused():
    assert "HOST:PORT" in run_proxy("--standalone", "--listen", "nowhere").stderr
    assert "--max-job-size" in run_proxy("--standalone", "--max-job-size", "-1").stderr
    assert "--lease-ms" in run_proxy("--standalone", "--lease-ms", "10").stderr
