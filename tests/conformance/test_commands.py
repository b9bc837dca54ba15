"""Every command and its replies, byte for byte (testserv.c cases named after it)."""

from __future__ import annotations

import socket

import pytest
from harness import wait_until

from .targets import Server

BAD = b"BAD_FORMAT\r\n"


# --- put --------------------------------------------------------------------------------------


@pytest.mark.config(max_job_size=10)
def test_too_big_swallows_bytes_plus_two_then_put_works(target: Server):
    with target.connect() as c:
        c.request(b"put 0 0 0 11\r\ndelete 9999\r\n", b"JOB_TOO_BIG\r\n")
        c.request(b"put 0 0 0 1\r\nx\r\n", b"INSERTED 1\r\n")
        stats = c.yaml(b"stats\r\n")
        assert (stats["cmd-put"], stats["total-jobs"], stats["max-job-size"]) == ("2", "1", "10")


def test_max_job_size_is_accepted_and_one_more_is_too_big(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        body = bytes(range(256)) * 255 + b"\r\n\x00" * 85  # 65,535 bytes
        assert len(body) == 65_535
        job = c.request_id(b"put 0 0 60 65535\r\n" + body + b"\r\n")
        c.request(b"peek %d\r\n" % job, b"FOUND %d 65535\r\n" % job + body + b"\r\n")
        c.request(b"put 0 0 60 65536\r\n" + b"y" * 65_536 + b"\r\n", b"JOB_TOO_BIG\r\n")
        c.request(b"list-tube-used\r\n", b"USING %s\r\n" % tube.encode())


def test_job_size_invalid_is_bad_format_and_the_body_is_read_as_commands(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"put 0 0 0 4294967296\r\n", BAD)
        c.request(b"put 0 0 0 10b\r\n", BAD)
        c.request(b"put 0 0 0 --!@#$%^&&**()0b\r\n", BAD)
        c.request(b"put 0 0 0 1\r\nx\r\n", b"INSERTED ")
        c.read_line()


@pytest.mark.parametrize(
    "line",
    [b"put 0 -1 0 1", b"put @ 0 0 1", b"put -1 0 0 1", b"put 4294967296 0 0 1", b"put 0 0 1"],
)
def test_put_bad_numbers_do_not_skip_the_body(target: Server, line: bytes):
    with target.connect() as c:
        c.request(line + b"\r\nx\r\n", BAD + b"UNKNOWN_COMMAND\r\n")


def test_put_trailing_garbage_is_bad_format_and_the_body_is_read_as_a_command(target: Server):
    with target.connect() as c:
        c.request(b"put 0 0 1 5x\r\nhello\r\n", BAD + b"UNKNOWN_COMMAND\r\n")


def test_expected_crlf_then_leftover_is_the_next_command(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"put 0 0 1 2\r\nabcd\r\n", b"EXPECTED_CRLF\r\nUNKNOWN_COMMAND\r\n")
        c.request(b"peek-ready\r\n", b"NOT_FOUND\r\n")


def test_max_priority_small_delay_and_empty_body(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.put(b"x", pri=4294967295)
        job = c.put(b"", delay=1)
        c.request(b"peek-delayed\r\n", b"FOUND %d 0\r\n\r\n" % job)


def test_binary_body_comes_back_byte_for_byte(target: Server, tube: str):
    body = b"\r\n\x00\xff put 0 0 0 1\r\n\r\n"
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(body)
        c.request(b"reserve\r\n", b"RESERVED %d %d\r\n%s\r\n" % (job, len(body), body))


def test_ttr_small_is_raised_to_one(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(ttr=0)
        assert c.yaml(b"stats-job %d\r\n" % job)["ttr"] == "1"


def test_ttr_large_values_come_back_exactly(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        for ttr in (120, 4294, 4295, 4296, 4297, 5000, 21600, 4294967295):
            job = c.put(ttr=ttr)
            assert c.yaml(b"stats-job %d\r\n" % job)["ttr"] == str(ttr)


@pytest.mark.fresh
def test_put_in_drain_mode_gets_draining_and_stats_says_so(target: Server):
    with target.connect() as c:
        assert c.yaml(b"stats\r\n")["draining"] == "false"
        target.drain()
        c.request(b"put 0 0 0 1\r\nx\r\n", b"DRAINING\r\n")
        stats = c.yaml(b"stats\r\n")
        assert (stats["draining"], stats["cmd-put"], stats["total-jobs"]) == ("true", "1", "0")


# --- peek -----------------------------------------------------------------------------------


@pytest.mark.fresh
def test_peek_ok_on_a_fresh_server(target: Server):
    with target.connect() as c:
        c.request(b"put 0 0 1 1\r\na\r\n", b"INSERTED 1\r\n")
        c.request(b"peek 1\r\n", b"FOUND 1 1\r\na\r\n")


@pytest.mark.config(unix=True)
def test_peek_ok_unix(target: Server):
    with target.connect() as c:
        c.request(b"put 0 0 1 1\r\na\r\n", b"INSERTED 1\r\n")
        c.request(b"peek 1\r\n", b"FOUND 1 1\r\na\r\n")


def test_peek_not_found(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put()
        c.request(b"delete %d\r\n" % job, b"DELETED\r\n")
        c.request(b"peek %d\r\n" % job, b"NOT_FOUND\r\n")
        c.request(b"peek 18446744073709551615\r\n", b"NOT_FOUND\r\n")


def test_peek_delayed_gives_shortest_delay_first(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"peek-delayed\r\n", b"NOT_FOUND\r\n")
        late = c.put(b"late", delay=1000)
        soon = c.put(b"soon", delay=100)
        c.request(b"peek-delayed\r\n", b"FOUND %d 4\r\nsoon\r\n" % soon)
        c.request(b"delete %d\r\n" % soon, b"DELETED\r\n")
        c.request(b"peek-delayed\r\n", b"FOUND %d 4\r\nlate\r\n" % late)
        c.request(b"delete %d\r\n" % late, b"DELETED\r\n")
        c.request(b"peek-delayed\r\n", b"NOT_FOUND\r\n")


def test_peek_ready_gives_the_most_urgent_then_oldest(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"peek-ready\r\n", b"NOT_FOUND\r\n")
        c.put(b"a", pri=5)
        b = c.put(b"b", pri=1)
        c.put(b"c", pri=1)
        c.request(b"peek-ready\r\n", b"FOUND %d 1\r\nb\r\n" % b)


# --- bury, kick, touch ----------------------------------------------------------------------


def test_peek_buried_kick(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(b"a")
        c.request(b"bury %d 0\r\n" % job, b"NOT_FOUND\r\n")
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\na\r\n" % job)
        c.request(b"bury %d 0\r\n" % job, b"BURIED\r\n")
        c.request(b"peek-buried\r\n", b"FOUND %d 1\r\na\r\n" % job)
        c.request(b"kick 1\r\n", b"KICKED 1\r\n")
        c.request(b"peek-ready\r\n", b"FOUND %d 1\r\na\r\n" % job)
        c.request(b"kick 1\r\n", b"KICKED 0\r\n")


def test_kick_prefers_buried_over_delayed(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        delayed = c.put(b"d", delay=100)
        buried = c.put(b"b")
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\nb\r\n" % buried)
        c.request(b"bury %d 0\r\n" % buried, b"BURIED\r\n")
        c.request(b"kick 10\r\n", b"KICKED 1\r\n")
        c.request(b"kick 10\r\n", b"KICKED 1\r\n")
        c.request(b"peek-delayed\r\n", b"NOT_FOUND\r\n")
        assert c.yaml(b"stats-job %d\r\n" % delayed)["state"] == "ready"


def test_kickjob_buried(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put()
        c.request(b"kick-job 18446744073709551615\r\n", b"NOT_FOUND\r\n")
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\nx\r\n" % job)
        c.request(b"bury %d 0\r\n" % job, b"BURIED\r\n")
        c.request(b"kick-job %d\r\n" % job, b"KICKED\r\n")
        c.request(b"kick-job %d\r\n" % job, b"NOT_FOUND\r\n")


def test_kickjob_delayed(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        ready = c.put()
        delayed = c.put(delay=1000)
        c.request(b"kick-job %d\r\n" % ready, b"NOT_FOUND\r\n")
        c.request(b"kick-job %d\r\n" % delayed, b"KICKED\r\n")
        c.request(b"kick-job %d\r\n" % delayed, b"NOT_FOUND\r\n")


def test_touch_not_found_unless_reserved_by_this_connection(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put()
        c.request(b"touch 18446744073709551615\r\n", b"NOT_FOUND\r\n")
        c.request(b"touch %d\r\n" % job, b"NOT_FOUND\r\n")
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\nx\r\n" % job)
        c.request(b"touch %d\r\n" % job, b"TOUCHED\r\n")


# --- delete, release ------------------------------------------------------------------------


def test_delete_ready_delayed_and_buried(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        ready, delayed = c.put(), c.put(delay=100)
        c.request(b"delete %d\r\n" % ready, b"DELETED\r\n")
        c.request(b"delete %d\r\n" % delayed, b"DELETED\r\n")
        c.request(b"delete %d\r\n" % ready, b"NOT_FOUND\r\n")


def test_delete_reserved_by_other_is_not_found(target: Server, tube: str):
    with target.connect() as a, target.connect() as b:
        a.use_only(tube)
        job = a.put()
        a.request(b"reserve\r\n", b"RESERVED %d 1\r\nx\r\n" % job)
        b.request(b"delete %d\r\n" % job, b"NOT_FOUND\r\n")
        b.request(b"release %d 0 0\r\n" % job, b"NOT_FOUND\r\n")
        b.request(b"bury %d 0\r\n" % job, b"NOT_FOUND\r\n")
        b.request(b"touch %d\r\n" % job, b"NOT_FOUND\r\n")
        a.request(b"delete %d\r\n" % job, b"DELETED\r\n")


def test_release_not_found_unless_reserved_then_released_and_delayed(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put()
        c.request(b"release %d 0 0\r\n" % job, b"NOT_FOUND\r\n")
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\nx\r\n" % job)
        c.request(b"release %d 7 100\r\n" % job, b"RELEASED\r\n")
        stats = c.yaml(b"stats-job %d\r\n" % job)
        assert (stats["state"], stats["pri"], stats["delay"], stats["releases"]) == (
            "delayed",
            "7",
            "100",
            "1",
        )


# --- tubes ------------------------------------------------------------------------------------


def test_multi_tube_reserve_takes_the_most_urgent_across_watched_tubes(target: Server, tube: str):
    other = tube + "b"
    with target.connect() as c:
        c.use_only(tube)
        c.put(b"low", pri=10)
        c.request(b"use %s\r\n" % other.encode(), b"USING %s\r\n" % other.encode())
        urgent = c.put(b"urgent", pri=1)
        c.request(b"watch %s\r\n" % other.encode(), b"WATCHING 2\r\n")
        c.request(b"reserve\r\n", b"RESERVED %d 6\r\nurgent\r\n" % urgent)


def test_watch_ignore_and_list_tubes_watched_in_beanstalkd_order(target: Server, tube: str):
    a, b, cc = (f"{tube}{s}".encode() for s in "abc")
    with target.connect() as c:
        c.request(b"watch %s\r\n" % a, b"WATCHING 2\r\n")
        c.request(b"watch %s\r\n" % a, b"WATCHING 2\r\n")
        c.request(b"watch %s\r\n" % b, b"WATCHING 3\r\n")
        c.request(b"watch %s\r\n" % cc, b"WATCHING 4\r\n")
        c.request(b"ignore %s\r\n" % a, b"WATCHING 3\r\n")
        c.request(b"ignore %snone\r\n" % a, b"WATCHING 3\r\n")
        # Removing an entry moves the last one into its slot (beanstalkd's ms.c).
        expected = b"---\n- default\n- %s\n- %s\n" % (cc, b)
        assert c.chunk(b"list-tubes-watched\r\n") == expected
        c.request(b"ignore default\r\n", b"WATCHING 2\r\n")
        c.request(b"ignore %s\r\n" % b, b"WATCHING 1\r\n")
        c.request(b"ignore %s\r\n" % cc, b"NOT_IGNORED\r\n")
        c.request(b"list-tube-used\r\n", b"USING default\r\n")


@pytest.mark.fresh
def test_list_tube_exact_yaml(target: Server):
    with target.connect() as c:
        assert c.chunk(b"list-tubes\r\n") == b"---\n- default\n"
        c.request(b"use w\r\n", b"USING w\r\n")
        c.request(b"watch u\r\n", b"WATCHING 2\r\n")
        c.request(b"watch w\r\n", b"WATCHING 3\r\n")
        assert c.chunk(b"list-tubes\r\n") == b"---\n- default\n- w\n- u\n"
        assert c.chunk(b"list-tubes-watched\r\n") == b"---\n- default\n- u\n- w\n"
        c.request(b"list-tube-used\r\n", b"USING w\r\n")
        c.request(b"ignore default\r\n", b"WATCHING 2\r\n")
        c.request(b"ignore u\r\n", b"WATCHING 1\r\n")
        c.request(b"ignore w\r\n", b"NOT_IGNORED\r\n")
        # "u" is no longer referenced: freed, and "w" keeps its place.
        assert c.chunk(b"list-tubes\r\n") == b"---\n- default\n- w\n"


def test_stats_tube_not_found_and_pause_tube_not_found(target: Server, tube: str):
    with target.connect() as c:
        c.request(b"stats-tube %s\r\n" % tube.encode(), b"NOT_FOUND\r\n")
        c.request(b"pause-tube %s 1\r\n" % tube.encode(), b"NOT_FOUND\r\n")


def test_stats_tube_exact_yaml(target: Server, tube: str):
    name = tube.encode()
    with target.connect() as c:
        c.request(b"use %s\r\n" % name, b"USING %s\r\n" % name)
        c.put(pri=5)
        c.put(pri=2000, delay=100)
        c.request(b"pause-tube %s 0\r\n" % name, b"PAUSED\r\n")
        assert c.chunk(b"stats-tube %s\r\n" % name) == (
            b"---\nname: %s\ncurrent-jobs-urgent: 1\ncurrent-jobs-ready: 1\n"
            b"current-jobs-reserved: 0\ncurrent-jobs-delayed: 1\ncurrent-jobs-buried: 0\n"
            b"total-jobs: 2\ncurrent-using: 1\ncurrent-watching: 0\ncurrent-waiting: 0\n"
            b"cmd-delete: 0\ncmd-pause-tube: 1\npause: 0\npause-time-left: 0\n" % name
        )


def test_stats_job_exact_yaml_of_a_ready_job(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(pri=5, ttr=1)
        assert c.chunk(b"stats-job %d\r\n" % job) == (
            b"---\nid: %d\ntube: %s\nstate: ready\npri: 5\nage: 0\ndelay: 0\nttr: 1\n"
            b"time-left: 0\nfile: 0\nreserves: 0\ntimeouts: 0\nreleases: 0\nburies: 0\n"
            b"kicks: 0\n" % (job, tube.encode())
        )


def test_stats_job_time_left_of_a_delayed_job_counts_down(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(delay=3)
        stats = c.yaml(b"stats-job %d\r\n" % job)
        assert (stats["state"], stats["delay"]) == ("delayed", "3")
        assert stats["time-left"] in ("2", "1")  # truncated; 1 only on a slow machine


# --- connections ------------------------------------------------------------------------------


def test_quit_closes_without_a_reply(target: Server):
    with target.connect() as c:
        c.send(b"quit\r\n")
        c.expect_closed()


def test_half_closed_waiting_reserve_gets_timed_out(target: Server, tube: str):
    with target.connect() as c, target.connect() as admin:
        c.use_only(tube)
        c.send(b"reserve\r\n")
        stats = b"stats-tube %s\r\n" % tube.encode()
        wait_until(lambda: admin.yaml(stats)["current-waiting"] == "1", 10, "the reserve waiting")
        c.sock.shutdown(socket.SHUT_WR)
        c.expect(b"TIMED_OUT\r\n")


@pytest.mark.config(max_job_size=10)
def test_refused_puts_count_in_cmd_put_and_only_expected_crlf_makes_a_producer(target: Server):
    with target.connect() as c:
        c.request(b"put 0 0 0 11\r\n" + b"z" * 13, b"JOB_TOO_BIG\r\n")
        c.request(b"put 0 0 0 1x\r\nq\r\n", BAD + b"UNKNOWN_COMMAND\r\n")
        stats = c.yaml(b"stats\r\n")
        assert (stats["cmd-put"], stats["total-jobs"]) == ("2", "0")
        # beanstalkd 1.12 sets the producer flag after its size and garbage checks (prot.c).
        assert stats["current-producers"] == "0"
        c.request(b"put 0 0 0 1\r\nabc\r\n", b"EXPECTED_CRLF\r\nUNKNOWN_COMMAND\r\n")
        stats = c.yaml(b"stats\r\n")
        assert (stats["cmd-put"], stats["current-producers"]) == ("3", "1")


def test_reserve_sent_just_before_a_half_close_gets_timed_out(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.send(b"reserve\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        c.expect(b"TIMED_OUT\r\n")


def test_stats_tube_shows_pause_and_pause_time_left_while_paused(target: Server, tube: str):
    name = tube.encode()
    with target.connect() as c:
        c.request(b"use %s\r\n" % name, b"USING %s\r\n" % name)
        c.request(b"pause-tube %s 10\r\n" % name, b"PAUSED\r\n")
        stats = c.yaml(b"stats-tube %s\r\n" % name)
        # Whole seconds, truncated, read just after the pause began: 9 (8 on a slow machine).
        assert (stats["pause"], stats["cmd-pause-tube"]) == ("10", "1")
        assert stats["pause-time-left"] in ("9", "8")
        c.request(b"pause-tube %s 0\r\n" % name, b"PAUSED\r\n")
        stats = c.yaml(b"stats-tube %s\r\n" % name)
        assert (stats["pause"], stats["pause-time-left"]) == ("0", "0")


def test_stats_job_of_a_reserved_job_shows_time_left_and_reserves(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        job = c.put(ttr=30)
        c.request(b"reserve\r\n", b"RESERVED %d 1\r\nx\r\n" % job)
        stats = c.yaml(b"stats-job %d\r\n" % job)
        assert (stats["state"], stats["reserves"]) == ("reserved", "1")
        assert stats["time-left"] in ("29", "28")  # truncated; 28 only on a slow machine
