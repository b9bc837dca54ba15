"""The machine's cumulative counters, as one object with a fixed field order.

Theory of operation: beanstalkd's ``cmd-*`` counters, ``job-timeouts``, ``total-jobs`` and
``total-connections`` are replicated state (they are in the snapshot, in ``FIELDS`` order).
A cmd-* counter counts every command that reached the machine from a connected client, whatever
its reply, except UnknownClient and InvalidArgument ones (beanstalkd counts parsed commands).
"""

from __future__ import annotations

# The cmd-* counters, named as the ServerStats fields that report them, in stats order.
CMD_FIELDS = (
    "cmd_put",
    "cmd_peek",
    "cmd_peek_ready",
    "cmd_peek_delayed",
    "cmd_peek_buried",
    "cmd_reserve",
    "cmd_reserve_with_timeout",
    "cmd_delete",
    "cmd_release",
    "cmd_use",
    "cmd_watch",
    "cmd_ignore",
    "cmd_bury",
    "cmd_kick",
    "cmd_touch",
    "cmd_stats",
    "cmd_stats_job",
    "cmd_stats_tube",
    "cmd_list_tubes",
    "cmd_list_tube_used",
    "cmd_list_tubes_watched",
    "cmd_pause_tube",
)
FIELDS = (*CMD_FIELDS, "job_timeouts", "total_jobs", "total_connections")


class Counters:
    """Plain int attributes, all starting at 0."""

    __slots__ = FIELDS

    cmd_put: int
    cmd_peek: int
    cmd_peek_ready: int
    cmd_peek_delayed: int
    cmd_peek_buried: int
    cmd_reserve: int
    cmd_reserve_with_timeout: int
    cmd_delete: int
    cmd_release: int
    cmd_use: int
    cmd_watch: int
    cmd_ignore: int
    cmd_bury: int
    cmd_kick: int
    cmd_touch: int
    cmd_stats: int
    cmd_stats_job: int
    cmd_stats_tube: int
    cmd_list_tubes: int
    cmd_list_tube_used: int
    cmd_list_tubes_watched: int
    cmd_pause_tube: int
    job_timeouts: int
    total_jobs: int
    total_connections: int

    def __init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, 0)

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def set_values(self, values: tuple[int, ...] | list[int]) -> None:
        for name, value in zip(FIELDS, values, strict=True):
            setattr(self, name, value)

    def cmd_values(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CMD_FIELDS}
