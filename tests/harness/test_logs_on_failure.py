"""A failing test's report carries the tail of its child processes' logs, so a CI failure
shows what the nodes said; a passing test's report does not."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

INNER = """
import sys

import pytest

from harness import Process

CHILD = "import sys; [print('child line', i) for i in range(500)]; print('the node said', "
CHILD += "sys.argv[1])"


@pytest.fixture
def server(tmp_path):
    child = Process([sys.executable, "-c", CHILD, "goodbye"], tmp_path / "child.log", "node-1")
    child.popen.wait(30)
    yield child
    if "{where}" == "teardown":
        raise RuntimeError("teardown failed")


def test_scenario(server):
    assert "{where}" != "call", "the scenario failed"
"""


@pytest.mark.parametrize("where", ["call", "teardown"])
def test_a_failing_test_shows_the_tail_of_its_childs_log(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    pytester.makepyfile(test_inner=INNER.replace("{where}", where))
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1 if where == "teardown" else 0, failed=int(where == "call"),
                           errors=int(where == "teardown"))  # fmt: skip
    out = result.stdout.str()
    assert "log of node-1" in out
    assert "the node said goodbye" in out
    assert "child line 499" in out
    assert "child line 200" not in out  # only the tail: the last 200 lines
    assert "child line 301" in out


def test_a_passing_test_shows_no_logs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    pytester.makepyfile(test_inner=INNER.replace("{where}", "nowhere"))
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "-rA")
    result.assert_outcomes(passed=1)
    assert "the node said" not in result.stdout.str()
