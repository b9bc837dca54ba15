"""The console script's shape: every subcommand is listed and help works without the network."""

import subprocess
import sys

from beanraft.cli import SUBCOMMANDS


def test_beanraft_help_lists_every_subcommand() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "--help"], capture_output=True, text=True, check=True
    )
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_beanraft_without_a_subcommand_fails_with_usage() -> None:
    result = subprocess.run([sys.executable, "-m", "beanraft"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: beanraft" in result.stderr
