"""Scenario scripts: beanstalkd sessions written as text, run against the real machine.

A script is a list of blocks separated by blank lines. A block is one command line, then
``----`` and everything that must come back:

    # A reserved job whose TTR passes goes back to ready and can be reserved again.
    put ttr=10s body=a
    ----
    INSERTED 1

    tick 10s
    ----
    OK

- Lines starting with ``#`` are comments. ``at 5s`` sets the clock without applying anything;
  ``tick 5s`` sets it and applies a Tick. Durations are ``<n>s`` or ``<n>ms`` (or ``0``).
- The first expected line is the reply (beanstalkd's words: ``RESERVED 1 a``, ``NOT_FOUND``,
  ``TUBES default a``; stats replies are ``OK``, then every key as a ``key: value`` line), then
  a ``wakeup <client> <RESULT>`` line for each of the outcome's wake-ups, in order. The whole
  block is compared; ``pytest --rewrite-scripts`` writes the machine's own answers in.
- Command arguments are positional or ``key=value`` (see ``COMMANDS``); ``admin`` as a client
  means "" (delete as an admin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass

from statemachine import commands as c
from statemachine import replies as r

Args = tuple[list[str], dict[str, str]]


def duration_ms(text: str) -> int:
    if text.endswith("ms"):
        return int(text[:-2])
    if text.endswith("s"):
        return int(float(text[:-1]) * 1000)
    if text == "0":
        return 0
    raise ValueError(f"duration {text!r} needs a unit: 5s or 250ms")


def _client(name: str) -> str:
    return "" if name == "admin" else name


def _put(pos: list[str], kw: dict[str, str]) -> c.Command:
    return c.Put(
        tube=kw.get("tube", "default"),
        priority=int(kw.get("pri", "0")),
        delay_ms=duration_ms(kw.get("delay", "0")),
        ttr_ms=duration_ms(kw.get("ttr", "60s")),
        body=kw.get("body", "x").encode(),
        client_id=kw.get("client", ""),
        request_id=kw.get("request", ""),
    )


def _reserve(pos: list[str], kw: dict[str, str]) -> c.Command:
    timeout = kw.get("timeout")
    timeout_ms = None if timeout is None else duration_ms(timeout)
    return c.Reserve(pos[0], timeout_ms, kw.get("request", ""), timeout is not None)


COMMANDS: dict[str, Callable[[list[str], dict[str, str]], c.Command]] = {
    "connect": lambda p, k: c.Connect(p[0], k.get("proxy", "p1")),
    "disconnect": lambda p, k: c.Disconnect(p[0]),
    "renew-lease": lambda p, k: c.RenewLease(p[0], duration_ms(p[1])),
    "drop-proxy": lambda p, k: c.DropProxy(p[0]),
    "use": lambda p, k: c.Use(p[0], p[1]),
    "watch": lambda p, k: c.Watch(p[0], p[1]),
    "ignore": lambda p, k: c.Ignore(p[0], p[1]),
    "list-tube-used": lambda p, k: c.ListTubeUsed(p[0]),
    "list-tubes-watched": lambda p, k: c.ListTubesWatched(p[0]),
    "put": _put,
    "rejected-put": lambda p, k: c.RejectedPut(p[0]),
    "reserve": _reserve,
    "reserve-job": lambda p, k: c.ReserveJob(p[0], int(p[1])),
    "delete": lambda p, k: c.Delete(_client(p[0]), int(p[1])),
    "release": lambda p, k: c.Release(
        p[0], int(p[1]), int(k.get("pri", "0")), duration_ms(k.get("delay", "0"))
    ),
    "bury": lambda p, k: c.Bury(p[0], int(p[1]), int(k.get("pri", "0"))),
    "touch": lambda p, k: c.Touch(p[0], int(p[1])),
    "kick": lambda p, k: c.Kick(p[0], int(p[1])),
    "kick-job": lambda p, k: c.KickJob(int(p[0])),
    "pause-tube": lambda p, k: c.PauseTube(p[0], duration_ms(p[1])),
    "peek": lambda p, k: c.Peek(int(p[0])),
    "peek-ready": lambda p, k: c.PeekReady(p[0]),
    "peek-delayed": lambda p, k: c.PeekDelayed(p[0]),
    "peek-buried": lambda p, k: c.PeekBuried(p[0]),
    "stats-job": lambda p, k: c.StatsJob(int(p[0])),
    "stats-tube": lambda p, k: c.StatsTube(p[0]),
    "stats": lambda p, k: c.Stats(),
    "list-tubes": lambda p, k: c.ListTubes(),
    "check-clients": lambda p, k: c.CheckClients(p[0], tuple(p[1:])),
    "tick": lambda p, k: c.Tick(),
}

# Replies that are one word (beanstalkd's), by type.
WORDS: dict[type, str] = {
    r.Ok: "OK",
    r.Waiting: "WAITING",
    r.DeadlineSoon: "DEADLINE_SOON",
    r.TimedOut: "TIMED_OUT",
    r.Deleted: "DELETED",
    r.Released: "RELEASED",
    r.Buried: "BURIED",
    r.Touched: "TOUCHED",
    r.Paused: "PAUSED",
    r.NotFound: "NOT_FOUND",
    r.NotIgnored: "NOT_IGNORED",
    r.JobTooBig: "JOB_TOO_BIG",
    r.AlreadyWaiting: "ALREADY_WAITING",
}


def reply_lines(reply: r.Reply) -> list[str]:
    """The reply in beanstalkd's words; stats replies add one ``key: value`` line per field."""
    if type(reply) in WORDS:
        return [WORDS[type(reply)]]
    if isinstance(reply, r.Inserted):
        return [f"INSERTED {reply.job_id}"]
    if isinstance(reply, r.Reserved | r.Found):
        word = "RESERVED" if isinstance(reply, r.Reserved) else "FOUND"
        return [f"{word} {reply.job_id} {reply.body.decode(errors='replace')}"]
    if isinstance(reply, r.Kicked):
        return [f"KICKED {reply.count}"]
    if isinstance(reply, r.Using):
        return [f"USING {reply.tube}"]
    if isinstance(reply, r.Watching):
        return [f"WATCHING {reply.count}"]
    if isinstance(reply, r.TubeList):
        return [" ".join(("TUBES", *reply.tubes))]
    if isinstance(reply, r.UnknownClient):
        return [f"UNKNOWN_CLIENT {reply.client_id}"]
    if isinstance(reply, r.InvalidArgument):
        return [f"INVALID_ARGUMENT {reply.message}"]
    if isinstance(reply, r.ClientStates):
        return [
            f"CLIENTS waiting={','.join(reply.waiting)} not-waiting={','.join(reply.not_waiting)}"
            f" missing={','.join(reply.missing)}"
        ]
    assert is_dataclass(reply), reply
    return ["OK"] + [f"{f.name.replace('_', '-')}: {getattr(reply, f.name)}" for f in fields(reply)]


def wakeup_line(wakeup: r.Wakeup) -> str:
    return f"wakeup {wakeup.client_id} {reply_lines(wakeup.result)[0]}"


@dataclass
class Step:
    line_number: int
    command: str
    expected: list[str] | None  # None: the reply is not checked


def parse(text: str) -> list[Step]:
    steps: list[Step] = []
    blocks: list[list[tuple[int, str]]] = [[]]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            blocks.append([])
        else:
            blocks[-1].append((number, line))
    for block in filter(None, blocks):
        (number, command), *rest = block
        lines = [line for _, line in rest]
        if lines and lines[0] != "----":
            raise ValueError(f"line {number}: one command per block, then ---- and the reply")
        steps.append(Step(number, command, lines[1:] if lines else None))
    return steps


def split_args(words: list[str]) -> Args:
    positional = [w for w in words if "=" not in w]
    keywords = dict(w.split("=", 1) for w in words if "=" in w)
    return positional, keywords
