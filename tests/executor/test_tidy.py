"""The plan and the spec are pure: they import nothing that does I/O or reads a clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {"__future__", "json", "posixpath", "re", "collections.abc", "dataclasses", "typing"}
ALLOWED |= {"jobqueue.errors"}  # the error tree's root: exception classes, nothing else


@pytest.mark.parametrize("module", ["cluster/jobspec.py", "executor/plan.py"])
def test_pure_modules_import_nothing_that_does_io(module: str) -> None:
    tree = ast.parse((REPO / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    ours = {name for name in imported if name.startswith(("executor", "cluster"))}
    assert ours <= {"cluster.jobspec"}, ours
    assert imported - ours <= ALLOWED, imported - ours - ALLOWED
