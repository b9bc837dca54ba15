"""Where the command-line clients find the cluster, its certificates and the job logs: flags,
then the environment, then the client file `beanraft up` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import client_config
from cluster.client_config import ClientConfigError, resolve
from executor.jobfiles import DEFAULT_LOG_DIR, default_log_dir


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "client.json"
    monkeypatch.setenv("BEANRAFT_CONFIG", str(path))
    for name in ("BEANRAFT_CLUSTER", "BEANRAFT_TLS_DIR", "BEANRAFT_INSECURE", "BEANRAFT_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_the_file_up_writes_is_enough(config: Path, tmp_path: Path) -> None:
    client_config.write(["127.0.0.1:1", "127.0.0.1:2"], tmp_path / "tls", log_dir=tmp_path / "logs")
    found = resolve()
    assert found.addresses == ("127.0.0.1:1", "127.0.0.1:2")
    assert found.tls_dir == (tmp_path / "tls").resolve()
    assert default_log_dir() == str((tmp_path / "logs").resolve())


def test_flags_beat_the_environment_which_beats_the_file(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_config.write(["127.0.0.1:1"], tmp_path / "tls")
    monkeypatch.setenv("BEANRAFT_CLUSTER", "127.0.0.1:5")
    monkeypatch.setenv("BEANRAFT_LOG_DIR", "/srv/logs")
    assert resolve().addresses == ("127.0.0.1:5",)
    assert resolve("127.0.0.1:9").addresses == ("127.0.0.1:9",)
    assert resolve(insecure=True).tls_dir is None
    assert default_log_dir() == "/srv/logs"


def test_an_insecure_cluster_is_remembered_as_insecure(config: Path) -> None:
    client_config.write(["127.0.0.1:1"], None)
    assert resolve().tls_dir is None


def test_nothing_anywhere_says_how_to_name_a_cluster(config: Path) -> None:
    with pytest.raises(ClientConfigError, match="BEANRAFT_CLUSTER"):
        resolve()
    assert default_log_dir() == DEFAULT_LOG_DIR


def test_a_broken_file_is_named(config: Path) -> None:
    config.write_text("{not json")
    with pytest.raises(ClientConfigError, match=str(config)):
        resolve()
