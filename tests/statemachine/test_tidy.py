"""statemachine/ stays pure: it imports only allow-listed modules (no clock, I/O, randomness).

The state machine is replicated: every replica must compute the same outcome from the same
(command, now_ms). A module that reads a clock, draws a random number, does I/O or logs would
break that silently, so this test reads every source file with ``ast`` and fails on any import
outside the allow-list below. Relative imports and ``statemachine.*`` are ours and allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "statemachine"

# Pure standard-library modules: computation only, no clock, randomness, I/O or threads.
# gc is here for one reason: snapshot restore pauses the cyclic collector while it builds a
# million objects (it changes speed, never a result).
ALLOWED = frozenset(
    {
        "__future__",
        "abc",
        "array",
        "bisect",
        "collections",
        "dataclasses",
        "enum",
        "functools",
        "gc",
        "heapq",
        "itertools",
        "math",
        "operator",
        "struct",
        "sys",
        "types",
        "typing",
    }
)
# Names that must never appear even inside an allowed module (for example sys.stdin).
FORBIDDEN_ATTRIBUTES = frozenset({"stdin", "stdout", "stderr", "argv", "environ", "exit"})


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _foreign_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    return [
        name
        for name in _imports(tree)
        if name.split(".")[0] not in ALLOWED and name.split(".")[0] != "statemachine"
    ]


def _sources() -> list[Path]:
    return sorted(PACKAGE.glob("**/*.py"))


def test_the_package_has_sources_to_check() -> None:
    assert len(_sources()) >= 10


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
def test_module_imports_only_pure_modules(path: Path) -> None:
    foreign = _foreign_imports(path.read_text())
    assert not foreign, f"{path.name} imports {foreign}: statemachine/ must stay pure"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
def test_module_touches_no_process_io_through_sys(path: Path) -> None:
    tree = ast.parse(path.read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    }
    assert not used & FORBIDDEN_ATTRIBUTES, f"{path.name} uses sys.{used & FORBIDDEN_ATTRIBUTES}"


@pytest.mark.parametrize(
    "source",
    ["import time", "from os import path", "import random", "import logging.handlers"],
)
def test_the_check_catches_a_forbidden_import(source: str) -> None:
    assert _foreign_imports(source) == [source.split()[1]]


def test_the_check_allows_our_own_and_pure_modules() -> None:
    source = "from statemachine.jobs import Job\nimport heapq\nfrom collections import deque"
    assert _foreign_imports(source) == []


def test_no_builtin_call_reads_the_outside_world() -> None:
    for path in _sources():
        tree = ast.parse(path.read_text())
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        banned = calls & {"open", "input", "print", "__import__", "eval", "exec", "hash", "id"}
        assert not banned, f"{path.name} calls {banned}"
