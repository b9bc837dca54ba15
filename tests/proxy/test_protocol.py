"""The beanstalkd codec without a network: every parser edge, every reply's bytes.

Expected values come from beanstalkd 1.12 itself (each quirk was checked against the binary;
the conformance suite checks them again, against the binary, over sockets).
"""

from __future__ import annotations

import pytest

from proxy import events as e
from proxy import render
from proxy.protocol import BeanstalkConnection
from statemachine import replies as r


def parse(data: bytes, max_job_size: int = 65_535) -> list[object]:
    conn = BeanstalkConnection(max_job_size=max_job_size)
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not e.NEED_DATA:
        out.append(event)
    return out


BAD = e.ProtocolError(b"BAD_FORMAT\r\n")
UNKNOWN = e.ProtocolError(b"UNKNOWN_COMMAND\r\n")


def test_put_with_body_gives_one_put_event():
    assert parse(b"put 0 0 60 5\r\nhello\r\n") == [e.Put(0, 0, 60, b"hello")]


def test_put_body_is_binary_safe_with_crlf_and_nul_inside():
    body = b"a\r\nb\x00c\r\n"
    assert parse(b"put 1 2 3 %d\r\n%s\r\n" % (len(body), body)) == [e.Put(1, 2, 3, body)]


def test_put_body_arriving_byte_by_byte_is_assembled():
    conn = BeanstalkConnection()
    data = b"put 0 0 1 3\r\nabc\r\nuse x\r\n"
    got = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        while (event := conn.next_event()) is not e.NEED_DATA:
            got.append(event)
    assert got == [e.Put(0, 0, 1, b"abc"), e.Use("x")]


def test_empty_body_is_allowed():
    assert parse(b"put 0 0 1 0\r\n\r\n") == [e.Put(0, 0, 1, b"")]


def test_pipelined_commands_come_out_in_order():
    assert parse(b"use a\r\nuse b\r\nwatch c\r\n") == [e.Use("a"), e.Use("b"), e.Watch("c")]


def test_wrong_two_bytes_after_body_give_expected_crlf_then_leftover_is_a_command():
    assert parse(b"put 0 0 1 2\r\nabcd\r\n") == [
        e.RejectedPut(b"EXPECTED_CRLF\r\n", producer=True),
        UNKNOWN,  # the leftover empty line
    ]


def test_job_too_big_discards_exactly_bytes_plus_two():
    # testserv.c too_big: with -z 10, "put 0 0 0 11" swallows "delete 9999\r\n" (13 bytes).
    got = parse(b"put 0 0 0 11\r\ndelete 9999\r\nput 0 0 0 1\r\nx\r\n", max_job_size=10)
    assert got == [e.RejectedPut(b"JOB_TOO_BIG\r\n", producer=False), e.Put(0, 0, 0, b"x")]


def test_job_too_big_is_reported_only_after_the_discarded_bytes_arrive():
    conn = BeanstalkConnection(max_job_size=10)
    conn.receive_data(b"put 0 0 0 100\r\n" + b"x" * 50)
    assert conn.next_event() is e.NEED_DATA
    conn.receive_data(b"x" * 52)
    assert conn.next_event() == e.RejectedPut(b"JOB_TOO_BIG\r\n", producer=False)


def test_job_too_big_wins_over_trailing_garbage():
    assert parse(b"put 0 0 0 11x\r\n" + b"y" * 13, max_job_size=10) == [
        e.RejectedPut(b"JOB_TOO_BIG\r\n", producer=False)
    ]


def test_max_job_size_itself_is_accepted():
    body = b"z" * 65_535
    assert parse(b"put 0 0 1 65535\r\n" + body + b"\r\n") == [e.Put(0, 0, 1, body)]


@pytest.mark.parametrize("line", [b"put 0 0 1 5x", b"put 0 0 1 5 "])
def test_put_trailing_garbage_is_counted_bad_format_and_body_is_parsed_as_commands(line: bytes):
    assert parse(line + b"\r\nhello\r\n") == [
        e.RejectedPut(b"BAD_FORMAT\r\n", producer=False),
        UNKNOWN,
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"put -1 0 1 1",
        b"put 0 -1 1 1",
        b"put +1 0 1 1",
        b"put abc 0 1 1",
        b"put 4294967296 0 1 1",
        b"put 0 0 1 4294967296",
        b"put 0 0 1",
    ],
)
def test_put_with_bad_numbers_is_bad_format_and_does_not_skip_the_body(line: bytes):
    assert parse(line + b"\r\nx\r\n") == [BAD, UNKNOWN]


def test_put_largest_values_and_extra_spaces_are_accepted():
    assert parse(b"put  4294967295  4294967295 4294967295 1\r\nx\r\n") == [
        e.Put(4294967295, 4294967295, 4294967295, b"x")
    ]


def test_line_of_224_bytes_with_crlf_is_parsed():
    assert parse(b"a" * 222 + b"\r\nuse b\r\n") == [UNKNOWN, e.Use("b")]


def test_line_of_225_bytes_is_bad_format_and_swallows_up_to_the_next_line_end():
    # The window fills at 224 bytes ("a"*223 + "\r"); the next window starts with "\n", so the
    # discarding ends only at the CRLF of "use b" (observed on beanstalkd 1.12).
    assert parse(b"a" * 223 + b"\r\nuse b\r\nuse c\r\n") == [BAD, e.Use("c")]


def test_long_line_is_discarded_and_the_connection_carries_on():
    assert parse(b"x" * 500 + b"\r\nput 0 0 1 1\r\nx\r\n") == [BAD, e.Put(0, 0, 1, b"x")]


def test_first_cr_not_followed_by_lf_hides_a_later_line_end():
    conn = BeanstalkConnection()
    conn.receive_data(b"foo\rbar\r\nuse a\r\n")
    assert conn.next_event() is e.NEED_DATA


def test_incomplete_line_needs_data():
    conn = BeanstalkConnection()
    conn.receive_data(b"use a")
    assert conn.next_event() is e.NEED_DATA
    conn.receive_data(b"\r\n")
    assert conn.next_event() == e.Use("a")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"PUT 0 0 1 1", UNKNOWN),
        (b"nont10knowncommand", UNKNOWN),
        (b"", UNKNOWN),
        (b"kick", UNKNOWN),
        (b"delete", UNKNOWN),
        (b"touch", UNKNOWN),
        (b"kick\t", UNKNOWN),
        (b"QUIT", UNKNOWN),
        (b"stats ", BAD),
        (b"peek-readyx", BAD),
        (b"reserve 1", BAD),
        (b"reserve-with-timeout", BAD),
        (b"list-tube-usedx", BAD),
        (b"stats-tube", BAD),
        (b"use a\x00", BAD),
        (b"quitxyz", e.Quit()),
        (b"quit", e.Quit()),
        (b"reserve", e.Reserve(None)),
        (b"stats", e.Stats()),
        (b"list-tubes", e.ListTubes()),
        (b"list-tube-used", e.ListTubeUsed()),
        (b"list-tubes-watched", e.ListTubesWatched()),
        (b"peek-ready", e.PeekReady()),
        (b"peek-delayed", e.PeekDelayed()),
        (b"peek-buried", e.PeekBuried()),
    ],
)
def test_command_matching(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"peek 1", e.Peek(1)),
        (b"peek  1", e.Peek(1)),
        (b"peek 18446744073709551615", e.Peek(2**64 - 1)),
        (b"peek 18446744073709551616", BAD),
        (b"peek " + b"9" * 50, BAD),
        (b"peek foo111", BAD),
        (b"peek 111foo", BAD),
        (b"peek +1", BAD),
        (b"peek 1 ", BAD),
        (b"delete 7", e.Delete(7)),
        (b"touch 7", e.Touch(7)),
        (b"touch 7x", BAD),
        (b"kick-job 7", e.KickJob(7)),
        (b"kick-job a111", BAD),
        (b"kick-job !@#!@#", BAD),
        (b"reserve-job 7", e.ReserveJob(7)),
        (b"stats-job 7", e.StatsJob(7)),
        (b"stats-job 111ABC", BAD),
        (b"stats-job 111 222", BAD),
        (b"release 1 2 3", e.Release(1, 2, 3)),
        (b"release 1 2", BAD),
        (b"release 1 4294967296 3", BAD),
        (b"release 1 2 3x", BAD),
        (b"bury 1 2", e.Bury(1, 2)),
        (b"bury 111abc 2", BAD),
        (b"bury 111", BAD),
        (b"bury 111 222abc", BAD),
    ],
)
def test_job_id_commands(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"reserve-with-timeout 5", e.Reserve(5, with_timeout=True)),
        (b"reserve-with-timeout 0", e.Reserve(0, with_timeout=True)),
        (b"reserve-with-timeout abc", e.Reserve(0, with_timeout=True)),
        (b"reserve-with-timeout \t+0 junk", e.Reserve(0, with_timeout=True)),
        (b"reserve-with-timeout -1", e.Reserve(None, with_timeout=True)),
        (b"reserve-with-timeout 2147483647", e.Reserve(2147483647, with_timeout=True)),
        (b"reserve-with-timeout 2147483648", e.Reserve(None, with_timeout=True)),
        (b"reserve-with-timeout 4294967296", e.Reserve(0, with_timeout=True)),
        (b"reserve-with-timeout 4294967297", e.Reserve(1, with_timeout=True)),
        (b"reserve-with-timeout 99999999999999999999999", BAD),
    ],
)
def test_reserve_with_timeout_parses_like_strtol_into_a_c_int(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"kick 5", e.Kick(5)),
        (b"kick 5 ", e.Kick(5)),
        (b"kick 5abc", e.Kick(5)),
        (b"kick  +5", e.Kick(5)),
        (b"kick -1", e.Kick(2**32 - 1)),
        (b"kick 4294967296", e.Kick(0)),
        (b"kick 18446744073709551615", e.Kick(2**32 - 1)),
        (b"kick 18446744073709551616", BAD),
        (b"kick -18446744073709551616", BAD),
        (b"kick  ", BAD),
        (b"kick x", BAD),
    ],
)
def test_kick_parses_like_strtoul_into_32_bits(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"use x_y", e.Use("x_y")),
        (b"use a(b)$", e.Use("a(b)$")),
        (b"use A-Za-z0-9+/;.$_()", e.Use("A-Za-z0-9+/;.$_()")),
        (b"use " + b"t" * 200, e.Use("t" * 200)),
        (b"use " + b"t" * 201, BAD),
        (b"use -a", BAD),
        (b"use a b", BAD),
        (b"use a ", BAD),
        (b"use  a", BAD),
        (b"use ", BAD),
        (b"use a!", BAD),
        (b"watch w", e.Watch("w")),
        (b"watch -w", BAD),
        (b"ignore w", e.Ignore("w")),
        (b"ignore w w", BAD),
        (b"stats-tube t", e.StatsTube("t")),
        (b"stats-tube t ", BAD),
    ],
)
def test_tube_name_rules(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"pause-tube default 1", e.PauseTube("default", 1)),
        (b"pause-tubedefault 1", e.PauseTube("default", 1)),
        (b"pause-tube  default 0", e.PauseTube("default", 0)),
        (b"pause-tube default  2", e.PauseTube("default", 2)),
        (b"pause-tube " + b"p" * 200 + b" 4294967295", e.PauseTube("p" * 200, 2**32 - 1)),
        (b"pause-tube " + b"p" * 201 + b" 1", BAD),
        (b"pause-tube -foo 1", BAD),
        (b"pause-tube foo! 1", BAD),
        (b"pause-tube default 1 ", BAD),
        (b"pause-tube default", BAD),
        (b"pause-tube default 4294967296", BAD),
    ],
)
def test_pause_tube_parsing(line: bytes, event: object):
    assert parse(line + b"\r\n") == [event]


def test_longest_valid_command_fills_the_line_buffer_exactly():
    line = b"pause-tube " + b"x" * 200 + b" 4294967295\r\n"
    assert len(line) == 224
    assert parse(line) == [e.PauseTube("x" * 200, 4294967295)]


def test_max_job_size_outside_beanstalkd_range_is_refused():
    with pytest.raises(ValueError, match="max_job_size"):
        BeanstalkConnection(max_job_size=2**31)


# --- replies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply", "wire"),
    [
        (e.Put(0, 0, 1, b"x"), r.Inserted(7), b"INSERTED 7\r\n"),
        (e.Reserve(None), r.Reserved(3, b"a\r\nb"), b"RESERVED 3 4\r\na\r\nb\r\n"),
        (e.Reserve(None), r.DeadlineSoon(), b"DEADLINE_SOON\r\n"),
        (e.Reserve(0, True), r.TimedOut(), b"TIMED_OUT\r\n"),
        (e.Delete(1), r.Deleted(), b"DELETED\r\n"),
        (e.Delete(1), r.NotFound(), b"NOT_FOUND\r\n"),
        (e.Release(1, 0, 0), r.Released(), b"RELEASED\r\n"),
        (e.Bury(1, 0), r.Buried(), b"BURIED\r\n"),
        (e.Touch(1), r.Touched(), b"TOUCHED\r\n"),
        (e.Kick(5), r.Kicked(2), b"KICKED 2\r\n"),
        (e.KickJob(5), r.Kicked(1), b"KICKED\r\n"),
        (e.PauseTube("t", 1), r.Paused(), b"PAUSED\r\n"),
        (e.Use("t"), r.Using("t"), b"USING t\r\n"),
        (e.Watch("t"), r.Watching(2), b"WATCHING 2\r\n"),
        (e.Ignore("t"), r.NotIgnored(), b"NOT_IGNORED\r\n"),
        (e.Peek(1), r.Found(1, b""), b"FOUND 1 0\r\n\r\n"),
        (e.ListTubes(), r.TubeList(("default", "w")), b"OK 18\r\n---\n- default\n- w\n\r\n"),
        (e.Put(0, 0, 1, b"x"), r.JobTooBig(), b"JOB_TOO_BIG\r\n"),
        (e.Put(0, 0, 1, b"x"), r.AlreadyWaiting(), b"INTERNAL_ERROR\r\n"),
        (e.Use("t"), r.InvalidArgument("tube"), b"BAD_FORMAT\r\n"),
    ],
)
def test_reply_bytes(command: e.Command, reply: r.Reply, wire: bytes):
    assert render.render(command, reply) == wire


def test_stats_job_yaml_matches_beanstalkd_1_12():
    stats = r.JobStats(1, "default", "ready", 5, 0, 0, 1000, 0, 0, 0, 0, 0, 0)
    body = (
        b"---\nid: 1\ntube: default\nstate: ready\npri: 5\nage: 0\ndelay: 0\nttr: 1\n"
        b"time-left: 0\nfile: 0\nreserves: 0\ntimeouts: 0\nreleases: 0\nburies: 0\nkicks: 0\n"
    )
    assert render.render(e.StatsJob(1), stats) == b"OK 143\r\n" + body + b"\r\n"


def test_time_left_of_a_deadline_just_set_is_one_second_less_as_in_beanstalkd():
    stats = r.JobStats(2, "x", "delayed", 5, 0, 3000, 1000, 3000, 0, 0, 0, 0, 0)
    assert b"\ntime-left: 2\n" in render.render(e.StatsJob(2), stats)


def test_stats_tube_yaml_matches_beanstalkd_1_12():
    stats = r.TubeStats("default", 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1000, 0)
    body = (
        b"---\nname: default\ncurrent-jobs-urgent: 0\ncurrent-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\ncurrent-jobs-delayed: 0\ncurrent-jobs-buried: 0\n"
        b"total-jobs: 0\ncurrent-using: 1\ncurrent-watching: 1\ncurrent-waiting: 0\n"
        b"cmd-delete: 0\ncmd-pause-tube: 1\npause: 1\npause-time-left: 0\n"
    )
    assert render.render(e.StatsTube("default"), stats) == b"OK 265\r\n" + body + b"\r\n"


def test_server_stats_keys_in_beanstalkd_order_with_process_keys():
    fields = r.ServerStats.__dataclass_fields__
    stats = r.ServerStats(**{name: 0 for name in fields})
    process = render.ProcessStats(
        pid=42,
        version="1.12",
        rusage_utime_us=1_745,
        rusage_stime_us=2_000_001,
        uptime_s=3,
        draining=True,
        id="30c671e84660961c",
        hostname="vm",
        os="#1 SMP PREEMPT_DYNAMIC @0",
        platform="x86_64",
    )
    out = render.server_stats(stats, process)
    head, body = out.split(b"\r\n", 1)
    assert head == b"OK %d" % (len(body) - 2)
    keys = [line.split(b":")[0] for line in body.split(b"\n")[1:-2]]
    assert len(keys) == 51
    assert keys[:3] == [b"current-jobs-urgent", b"current-jobs-ready", b"current-jobs-reserved"]
    assert keys[35:] == [
        b"total-connections",
        b"pid",
        b"version",
        b"rusage-utime",
        b"rusage-stime",
        b"uptime",
        b"binlog-oldest-index",
        b"binlog-current-index",
        b"binlog-records-migrated",
        b"binlog-records-written",
        b"binlog-max-size",
        b"draining",
        b"id",
        b"hostname",
        b"os",
        b"platform",
    ]
    assert b'\nversion: "1.12"\nrusage-utime: 0.001745\nrusage-stime: 2.000001\n' in body
    assert b"\ndraining: true\nid: 30c671e84660961c\nhostname: vm\n" in body
    assert b"\nos: #1 SMP PREEMPT_DYNAMIC @0\nplatform: x86_64\n" in body


def test_fast_dispatch_gives_what_the_ordered_prefix_scan_gives():
    # The codec's word table is a shortcut for prot.c's ordered prefix scan: compare them on
    # every command word, mangled and combined with assorted tails.
    import random

    from proxy.protocol import _COMMANDS

    rng = random.Random(7)
    words = [p.rstrip(b" ") for p, _ in _COMMANDS] + [b"", b"x", b"PUT", b"kick-jobs"]
    tails = [b"", b" ", b"  ", b" 1", b" 1 2", b" 1 2 3", b" 0 0 1 1", b" a", b"x 1", b"-x 1"]
    for _ in range(5000):
        word = rng.choice(words)
        if rng.random() < 0.3 and word:
            word = word[: rng.randrange(len(word) + 1)]
        line = word + rng.choice(tails) + rng.choice([b"", b" t", b"9", b"("])
        fast, slow = BeanstalkConnection(), BeanstalkConnection()
        assert fast._command(line) == slow._scan(line), line


def test_the_codec_and_rendering_import_nothing_that_does_io_or_reads_time():
    import subprocess
    import sys

    forbidden = "socket asyncio selectors ssl time os subprocess threading random uuid grpc"
    code = (
        "import sys; before = set(sys.modules); import proxy.protocol, proxy.render; "
        f"bad = {set(forbidden.split())!r}; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
