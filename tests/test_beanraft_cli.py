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


def test_beanraft_version_names_the_release() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("beanraft ")


def test_output_piped_into_head_ends_quietly_without_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "job-1.stdout.log").write_bytes(b"x" * (4 << 20))
    script = (
        f"set -o pipefail; {sys.executable} -m beanraft logs 1 --log-dir {tmp_path} | head -c 10"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x" * 10
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_logs_follow_waits_for_a_job_that_has_not_started_yet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import time

    follower = subprocess.Popen(
        [sys.executable, "-m", "beanraft", "logs", "5", "-f", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # the scenario: for a while there is no job yet, and it keeps waiting
    assert follower.poll() is None  # still waiting, not "no logs"
    # The job starts (its state file and output appear), prints, and ends.
    (tmp_path / "job-5.state.json").write_text(json.dumps({"worker_pid": os.getpid()}))
    (tmp_path / "job-5.stdout.log").write_text("hello\n")
    time.sleep(0.5)  # the scenario: the job runs a moment before it ends
    (tmp_path / "job-5.state.json").unlink()
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out == "hello\n" and "waiting for job 5" in err


def test_logs_without_follow_of_an_unknown_job_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "logs", "5", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "no logs for job 5" in result.stderr


def test_every_option_of_every_subcommand_says_what_it_is_for() -> None:
    import argparse
    import importlib

    def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += undocumented(child, f"{path} {name}")
            elif not action.help and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction
            ):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    missing = []
    for name, (module_name, _) in SUBCOMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"beanraft {name}")
        importlib.import_module(module_name).add_arguments(parser)
        missing += undocumented(parser, f"beanraft {name}")
    assert not missing, missing


def test_help_shows_each_options_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "submit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())  # argparse wraps long lines
    assert "time to run, seconds (default: 60)" in text
    assert "seconds before the job is ready (default: 0)" in text
