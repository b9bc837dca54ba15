"""The events the beanstalkd codec produces: one per command, plus the errors it decides alone.

Units are the protocol's own (seconds); ``proxy.session`` converts to milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --- Events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put:
    priority: int
    delay_s: int
    ttr_s: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Reserve:
    """``reserve`` (timeout_s None) or ``reserve-with-timeout`` (timeout_s None when the
    truncated C int was negative: beanstalkd 1.12 then waits forever)."""

    timeout_s: int | None
    with_timeout: bool = False


@dataclass(frozen=True, slots=True)
class ReserveJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class Delete:
    job_id: int


@dataclass(frozen=True, slots=True)
class Release:
    job_id: int
    priority: int
    delay_s: int


@dataclass(frozen=True, slots=True)
class Bury:
    job_id: int
    priority: int


@dataclass(frozen=True, slots=True)
class Touch:
    job_id: int


@dataclass(frozen=True, slots=True)
class Use:
    tube: str


@dataclass(frozen=True, slots=True)
class Watch:
    tube: str


@dataclass(frozen=True, slots=True)
class Ignore:
    tube: str


@dataclass(frozen=True, slots=True)
class Peek:
    job_id: int


@dataclass(frozen=True, slots=True)
class PeekReady:
    pass


@dataclass(frozen=True, slots=True)
class PeekDelayed:
    pass


@dataclass(frozen=True, slots=True)
class PeekBuried:
    pass


@dataclass(frozen=True, slots=True)
class Kick:
    bound: int


@dataclass(frozen=True, slots=True)
class KickJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class StatsJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class StatsTube:
    tube: str


@dataclass(frozen=True, slots=True)
class Stats:
    pass


@dataclass(frozen=True, slots=True)
class ListTubes:
    pass


@dataclass(frozen=True, slots=True)
class ListTubeUsed:
    pass


@dataclass(frozen=True, slots=True)
class ListTubesWatched:
    pass


@dataclass(frozen=True, slots=True)
class PauseTube:
    tube: str
    delay_s: int


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Reply ``reply`` and change nothing (BAD_FORMAT, UNKNOWN_COMMAND)."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class RejectedPut:
    """A put whose four numbers parsed but which creates no job: beanstalkd counts it in
    ``cmd-put``; ``producer`` says whether it also marked the connection a producer (it does
    for EXPECTED_CRLF, not for JOB_TOO_BIG or trailing garbage)."""

    reply: bytes
    producer: bool


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


Command = (
    Put
    | Reserve
    | ReserveJob
    | Delete
    | Release
    | Bury
    | Touch
    | Use
    | Watch
    | Ignore
    | Peek
    | PeekReady
    | PeekDelayed
    | PeekBuried
    | Kick
    | KickJob
    | StatsJob
    | StatsTube
    | Stats
    | ListTubes
    | ListTubeUsed
    | ListTubesWatched
    | PauseTube
    | Quit
)
Event = Command | ProtocolError | RejectedPut
