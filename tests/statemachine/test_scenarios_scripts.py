"""Runs every scenario script in ``scenarios/*.txt`` (format: ``scenarios/script.py``).

Each script is a beanstalkd session told as text, and the whole of it is compared: every
command's reply, every line of it (a stats reply's every key) and its wake-ups. A failing step
names the file and line. ``pytest --rewrite-scripts`` writes what the machine answers now into
the scripts instead (comments, ``at`` lines and the commands stay): read the diff, then commit.
The driver checks invariants and a snapshot round trip after every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenarios.driver import Driver
from scenarios.script import COMMANDS, duration_ms, reply_lines, split_args, wakeup_line

SCRIPTS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def run_script(text: str, where: str, rewrite: bool = False) -> str:
    """Run ``text``; assert every reply is the script's (unless ``rewrite``); return the
    script with the replies the machine gave."""
    q = Driver()
    out: list[list[str]] = []
    for number, block in _blocks(text):
        comments = [line for line in block if line.startswith("#")]
        body = [line for line in block if not line.startswith("#")]
        if not body:
            out.append(comments)
            continue
        command, *rest = body
        if rest and rest[0] != "----":
            raise ValueError(f"{where}:{number}: one command per block, then ---- and the reply")
        name, *words = command.split()
        positional, keywords = split_args(words)
        if name == "at":
            q.at(duration_ms(positional[0]))
            out.append([*comments, command])
            continue
        if name == "tick" and positional:
            q.at(duration_ms(positional.pop()))
        outcome = q.apply(COMMANDS[name](positional, keywords))
        actual = reply_lines(outcome.reply) + [wakeup_line(w) for w in outcome.wakeups]
        if not rewrite:
            expected = rest[1:]
            assert expected == actual, (
                f"{where}:{number} {command}: got {actual}, the script says {expected}"
            )
        out.append([*comments, command, "----", *actual])
    return "\n\n".join("\n".join(block) for block in out) + "\n"


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks of stripped lines, each with its first line's number."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            if current:
                blocks.append((first, current))
            current = []
            continue
        if not current:
            first = number
        current.append(line)
    if current:
        blocks.append((first, current))
    return blocks


def test_there_are_scripts_to_run() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_scenario_script(path: Path, request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--rewrite-scripts"):
        path.write_text(run_script(path.read_text(), path.name, rewrite=True))
    run_script(path.read_text(), path.name)


def test_a_script_whose_reply_differs_fails_with_file_and_line() -> None:
    with pytest.raises(AssertionError, match="demo:2 put"):
        run_script("\nput body=a\n----\nINSERTED 2\n", "demo")


def test_a_script_that_misses_a_wakeup_fails() -> None:
    text = "connect c1\n----\nOK\n\nreserve c1\n----\nWAITING\n\nput\n----\nINSERTED 1\n"
    with pytest.raises(AssertionError, match="wakeup c1 RESERVED 1 x"):
        run_script(text, "demo")


def test_a_stats_reply_is_compared_whole_not_as_a_subset() -> None:
    text = "put\n----\nINSERTED 1\n\nstats-job 1\n----\nOK\nstate: ready\n"
    with pytest.raises(AssertionError, match="demo:5 stats-job 1"):
        run_script(text, "demo")


def test_rewriting_fills_in_every_reply_and_keeps_comments_and_at_lines() -> None:
    text = "# a put\nput body=a\n\nat 5s\n\nreserve-job admin 1\n----\nWRONG\n"
    rewritten = run_script(text, "demo", rewrite=True)
    assert rewritten.startswith("# a put\nput body=a\n----\nINSERTED 1\n\nat 5s\n\n")
    assert "WRONG" not in rewritten
    run_script(rewritten, "demo")  # what it wrote passes
