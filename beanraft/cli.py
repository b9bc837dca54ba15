"""``beanraft SUBCOMMAND ...``: one console script, its subcommands filled in by each package.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only for the subcommand being run, so ``beanraft submit`` does not pay
for grpc and pysyncobj.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "beanraft.up",
        "run a complete local cluster: nodes serving the beanstalkd protocol, a worker pool",
    ),
    "node": (
        "beanraft.node",
        "run one cluster node (and, with --beanstalkd-listen, serve beanstalkd)",
    ),
    "cluster": (
        "cluster.cli_admin",
        "cluster administration: status, join, leave, snapshot, restore",
    ),
    "job": ("beanraft.cli_job", "the job API: run, status, list, stop and log, from any node"),
    "certs": ("cluster.cli_certs", "create a CA and role certificates for mTLS"),
    "proxy": ("proxy.cli", "serve the beanstalkd protocol in front of a cluster"),
    "worker": ("executor.cli_worker", "run a worker pool that executes jobs in isolation"),
    "submit": ("executor.cli_submit", "put a command to run as a job"),
    "logs": ("executor.cli_logs", "show (and follow) a job's output on this worker host"),
    "stop": ("executor.cli_stop", "stop a running job on this worker host"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, unless there is none or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default in ("", [], argparse.SUPPRESS)
        if not action.option_strings or nothing or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Shows defaults; subcommands' parsers are of this class too (argparse makes them so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="beanraft",
        description="beanraft: a beanstalkd-compatible job queue replicated with Raft, with "
        "isolated worker pools and a job API. `beanraft SUBCOMMAND --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"beanraft {_version()}")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("beanraft")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    args = _parser(selected if selected in SUBCOMMANDS else None).parse_args(args_list)
    module = importlib.import_module(SUBCOMMANDS[args.subcommand][0])
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:
        # Piped into `head`: the reader is gone, which is not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"beanraft {args.subcommand}: interrupted", file=sys.stderr)
        return 130
