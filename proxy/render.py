"""Replies to bytes: the one table from state-machine replies to beanstalkd 1.12's reply lines.

The YAML bodies copy beanstalkd 1.12's ``STATS_FMT``, ``STATS_TUBE_FMT`` and ``STATS_JOB_FMT``
(the Debian 1.12 build, checked against the binary): keys in its order, strings bare except
``version``, which 1.12 prints quoted. Times are whole seconds, truncated.

Rule: pure functions, no I/O; the process keys of ``stats`` come in as a ``ProcessStats``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import events
from statemachine import replies as r

INTERNAL_ERROR = b"INTERNAL_ERROR\r\n"
DRAINING = b"DRAINING\r\n"
TIMED_OUT = b"TIMED_OUT\r\n"


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """The keys of ``stats`` that belong to the answering process, not to the queue."""

    pid: int
    version: str
    rusage_utime_us: int
    rusage_stime_us: int
    uptime_s: int
    draining: bool
    id: str
    hostname: str
    os: str
    platform: str
    binlog_max_size: int = 10_485_760  # what beanstalkd reports without -b


def _chunk(head: bytes, body: bytes) -> bytes:
    return b"%s %d\r\n%s\r\n" % (head, len(body), body)


def _yaml(pairs: list[tuple[str, object]]) -> bytes:
    text = "---\n" + "".join(f"{key}: {value}\n" for key, value in pairs)
    return _chunk(b"OK", text.encode())


def _seconds_left(ms: int) -> int:
    """beanstalkd reads its nanosecond clock strictly after the deadline was set, so a deadline
    set 3 s ahead shows 2 at once; with a millisecond clock, ``ms - 1`` gives the same figure."""
    return 0 if ms <= 0 else (ms - 1) // 1000


def tube_list(tubes: tuple[str, ...]) -> bytes:
    return _chunk(b"OK", ("---\n" + "".join(f"- {t}\n" for t in tubes)).encode())


def job_stats(s: r.JobStats) -> bytes:
    return _yaml(
        [
            ("id", s.job_id),
            ("tube", s.tube),
            ("state", s.state),
            ("pri", s.priority),
            ("age", s.age_ms // 1000),
            ("delay", s.delay_ms // 1000),
            ("ttr", s.ttr_ms // 1000),
            ("time-left", _seconds_left(s.time_left_ms)),
            ("file", 0),
            ("reserves", s.reserves),
            ("timeouts", s.timeouts),
            ("releases", s.releases),
            ("buries", s.buries),
            ("kicks", s.kicks),
        ]
    )


def tube_stats(s: r.TubeStats) -> bytes:
    return _yaml(
        [
            ("name", s.name),
            ("current-jobs-urgent", s.current_jobs_urgent),
            ("current-jobs-ready", s.current_jobs_ready),
            ("current-jobs-reserved", s.current_jobs_reserved),
            ("current-jobs-delayed", s.current_jobs_delayed),
            ("current-jobs-buried", s.current_jobs_buried),
            ("total-jobs", s.total_jobs),
            ("current-using", s.current_using),
            ("current-watching", s.current_watching),
            ("current-waiting", s.current_waiting),
            ("cmd-delete", s.cmd_delete),
            ("cmd-pause-tube", s.cmd_pause_tube),
            ("pause", s.pause_ms // 1000),
            ("pause-time-left", _seconds_left(s.pause_time_left_ms)),
        ]
    )


# ServerStats fields in beanstalkd's key order (field name = key with '-' as '_').
_SERVER_KEYS = [
    "current-jobs-urgent",
    "current-jobs-ready",
    "current-jobs-reserved",
    "current-jobs-delayed",
    "current-jobs-buried",
    "cmd-put",
    "cmd-peek",
    "cmd-peek-ready",
    "cmd-peek-delayed",
    "cmd-peek-buried",
    "cmd-reserve",
    "cmd-reserve-with-timeout",
    "cmd-delete",
    "cmd-release",
    "cmd-use",
    "cmd-watch",
    "cmd-ignore",
    "cmd-bury",
    "cmd-kick",
    "cmd-touch",
    "cmd-stats",
    "cmd-stats-job",
    "cmd-stats-tube",
    "cmd-list-tubes",
    "cmd-list-tube-used",
    "cmd-list-tubes-watched",
    "cmd-pause-tube",
    "job-timeouts",
    "total-jobs",
    "max-job-size",
    "current-tubes",
    "current-connections",
    "current-producers",
    "current-workers",
    "current-waiting",
    "total-connections",
]


def _micros(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def server_stats(s: r.ServerStats, p: ProcessStats) -> bytes:
    pairs: list[tuple[str, object]] = [(k, getattr(s, k.replace("-", "_"))) for k in _SERVER_KEYS]
    pairs += [
        ("pid", p.pid),
        ("version", f'"{p.version}"'),
        ("rusage-utime", _micros(p.rusage_utime_us)),
        ("rusage-stime", _micros(p.rusage_stime_us)),
        ("uptime", p.uptime_s),
        ("binlog-oldest-index", 0),
        ("binlog-current-index", 0),
        ("binlog-records-migrated", 0),
        ("binlog-records-written", 0),
        ("binlog-max-size", p.binlog_max_size),
        ("draining", "true" if p.draining else "false"),
        ("id", p.id),
        ("hostname", p.hostname),
        ("os", p.os),
        ("platform", p.platform),
    ]
    return _yaml(pairs)


_SIMPLE: dict[type, bytes] = {
    r.DeadlineSoon: b"DEADLINE_SOON\r\n",
    r.TimedOut: TIMED_OUT,
    r.Deleted: b"DELETED\r\n",
    r.Released: b"RELEASED\r\n",
    r.Buried: b"BURIED\r\n",
    r.Touched: b"TOUCHED\r\n",
    r.Paused: b"PAUSED\r\n",
    r.NotFound: b"NOT_FOUND\r\n",
    r.NotIgnored: b"NOT_IGNORED\r\n",
    r.JobTooBig: b"JOB_TOO_BIG\r\n",
    # The codec checks every value the machine checks; the machine refusing one anyway means
    # the two disagree about a limit, which the client sees as beanstalkd's reply to bad input.
    r.InvalidArgument: b"BAD_FORMAT\r\n",
}


def render(command: events.Command, reply: r.Reply) -> bytes:
    """The reply line (and chunk) for ``reply`` to ``command``, except ``stats`` (see
    ``server_stats``). Replies no beanstalkd command can produce give INTERNAL_ERROR."""
    simple = _SIMPLE.get(type(reply))
    if simple is not None:
        return simple
    match reply:
        case r.Inserted(job_id=job_id):
            return b"INSERTED %d\r\n" % job_id
        case r.Reserved(job_id=job_id, body=body):
            return _chunk(b"RESERVED %d" % job_id, body)
        case r.Found(job_id=job_id, body=body):
            return _chunk(b"FOUND %d" % job_id, body)
        case r.Kicked(count=count):
            return (
                b"KICKED\r\n" if isinstance(command, events.KickJob) else b"KICKED %d\r\n" % count
            )
        case r.Using(tube=tube):
            return b"USING %s\r\n" % tube.encode()
        case r.Watching(count=count):
            return b"WATCHING %d\r\n" % count
        case r.TubeList(tubes=tubes):
            return tube_list(tubes)
        case r.JobStats():
            return job_stats(reply)
        case r.TubeStats():
            return tube_stats(reply)
    return INTERNAL_ERROR
