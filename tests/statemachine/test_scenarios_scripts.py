"""Runs every scenario script in ``scenarios/*.txt`` (format: ``scenarios/script.py``).

Each script is a beanstalkd session told as text; a failing step names the file and line.
The driver checks invariants and a snapshot round trip after every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenarios.driver import Driver
from scenarios.script import (
    COMMANDS,
    Step,
    duration_ms,
    parse,
    reply_lines,
    split_args,
    wakeup_line,
)

from statemachine import replies as r

SCRIPTS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def run_script(text: str, where: str) -> None:
    q = Driver()
    for step in parse(text):
        name, *words = step.command.split()
        positional, keywords = split_args(words)
        if name == "at":
            q.at(duration_ms(positional[0]))
            continue
        if name == "tick" and positional:
            q.at(duration_ms(positional.pop()))
        outcome = q.apply(COMMANDS[name](positional, keywords))
        if step.expected is not None:
            _check(step, outcome, f"{where}:{step.line_number} {step.command}")


def _check(step: Step, outcome: r.Outcome, where: str) -> None:
    assert step.expected is not None
    actual = reply_lines(outcome.reply)
    wakeups = [wakeup_line(w) for w in outcome.wakeups]
    expected_wakeups = [line for line in step.expected if line.startswith("wakeup ")]
    expected = [line for line in step.expected if not line.startswith("wakeup ")]
    assert expected, f"{where}: say what the reply is"
    assert actual[0] == expected[0], f"{where}: got {actual[0]!r}, want {expected[0]!r}"
    for line in expected[1:]:
        assert line in actual[1:], f"{where}: {line!r} not in {actual[1:]}"
    assert wakeups == expected_wakeups, f"{where}: wake-ups {wakeups}, want {expected_wakeups}"


def test_there_are_scripts_to_run() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_scenario_script(path: Path) -> None:
    run_script(path.read_text(), path.name)


def test_a_script_whose_reply_differs_fails_with_file_and_line() -> None:
    with pytest.raises(AssertionError, match="demo:2 put"):
        run_script("\nput body=a\n----\nINSERTED 2\n", "demo")


def test_a_script_that_misses_a_wakeup_fails() -> None:
    text = "connect c1\n\nreserve c1\n\nput\n----\nINSERTED 1\n"
    with pytest.raises(AssertionError, match="wake-ups"):
        run_script(text, "demo")
