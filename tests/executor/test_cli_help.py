"""The executor's subcommands parse and explain themselves without root or a network."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("subcommand", "flag"),
    [
        ("worker", "--concurrency"),
        ("submit", "--max-memory"),
        ("logs", "--follow"),
        ("stop", "--grace"),
    ],
)
def test_subcommand_help_lists_its_flags(subcommand: str, flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", subcommand, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert flag in result.stdout


def test_submit_without_a_command_fails_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "submit", "--beanstalkd", "127.0.0.1:1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no command given" in result.stderr


def test_worker_with_a_bad_address_fails_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "worker", "--beanstalkd", "nowhere"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr or "root" in result.stderr
