"""beanraft as a user installs it: ``pip install beanraft`` with no extras into a fresh virtual
environment, then every subcommand's ``--help`` and a worker pool that runs a job. It fails if
a module imports something the package does not declare (greenstalk was once only a dev
dependency, and ``beanraft worker`` failed on a plain install)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Process

from beanraft.cli import SUBCOMMANDS

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.beanstalkd]

REPO = Path(__file__).resolve().parents[2]


def _sources(into: Path) -> Path:
    """The tracked sources only (no build, no compiled modules), as a release holds them."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        target = into / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name.decode()).read_bytes())
    return into


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain-install")
    source = _sources(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin" / "beanraft"


def test_every_subcommands_help_works_on_a_plain_install(plain_install: Path) -> None:
    for name in SUBCOMMANDS:
        done = subprocess.run(
            [str(plain_install), name, "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert f"beanraft {name}" in done.stdout, name


def test_a_worker_from_a_plain_install_runs_a_job(
    plain_install: Path, beanstalkd: Any, cgroup_root: str, tmp_path: Path
) -> None:
    address = f"{beanstalkd[0]}:{beanstalkd[1]}"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    worker = Process(
        [str(plain_install), "worker", "--beanstalkd", address, "--log-dir", str(log_dir),
         "--cgroup-root", cgroup_root],
        tmp_path / "worker.out", "worker", cwd=None,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [str(plain_install), "submit", "--beanstalkd", address, "--wait", "60", "--",
             "echo", "plain"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr, _read(tmp_path / "worker.out"))
        lines = done.stdout.splitlines()
        assert lines[-2] == "plain"
        assert json.loads(lines[-1])["action"] == "delete"
    finally:
        worker.stop(grace_s=30)


def _read(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]
