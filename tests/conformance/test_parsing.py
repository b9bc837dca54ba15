"""Framing, limits and parsing quirks: beanstalkd 1.12's replies, byte for byte.

Cases from beanstalkd's testserv.c (Appendix B of the reference) are named after it.
"""

from __future__ import annotations

import pytest

from .targets import Server

BAD = b"BAD_FORMAT\r\n"
UNKNOWN = b"UNKNOWN_COMMAND\r\n"


def test_unknown_command(target: Server):
    with target.connect() as c:
        c.request(b"nont10knowncommand\r\n", UNKNOWN)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"PUT 0 0 1 1", UNKNOWN),
        (b"", UNKNOWN),
        (b"kick", UNKNOWN),
        (b"delete", UNKNOWN),
        (b"touch", UNKNOWN),
        (b"QUIT", UNKNOWN),
        (b"stats ", BAD),
        (b"peek-readyx", BAD),
        (b"reserve 1", BAD),
        (b"reserve-with-timeout", BAD),
        (b"list-tube-usedx", BAD),
        (b"use a\x00", BAD),
        (b"stats-job 111ABC", BAD),
        (b"stats-job 111 222", BAD),
        (b"kick  ", BAD),
        (b"kick 18446744073709551616", BAD),
        (b"reserve-with-timeout 99999999999999999999999", BAD),
        (b"use a b", BAD),
        (b"use a ", BAD),
        (b"use  a", BAD),
        (b"use ", BAD),
        (b"use -a", BAD),
        (b"pause-tube -foo 1", BAD),
        (b"pause-tube foo! 1", BAD),
        (b"pause-tube default 1 ", BAD),
    ],
)
def test_malformed_lines_get_beanstalkd_errors_and_the_connection_keeps_working(
    target: Server, line: bytes, reply: bytes
):
    with target.connect() as c:
        c.request(line + b"\r\n", reply)
        c.request(b"list-tube-used\r\n", b"USING default\r\n")


@pytest.mark.fresh
def test_too_long_commandline_is_discarded_then_put_works(target: Server):
    with target.connect() as c:
        c.request(b"x" * 500 + b"\r\n", BAD)
        c.request(b"put 0 0 0 1\r\nx\r\n", b"INSERTED 1\r\n")


def test_line_of_exactly_224_bytes_is_parsed(target: Server):
    with target.connect() as c:
        c.request(b"a" * 222 + b"\r\nlist-tube-used\r\n", UNKNOWN + b"USING default\r\n")


def test_line_of_225_bytes_swallows_through_the_next_line_end(target: Server):
    with target.connect() as c:
        c.request(b"a" * 223 + b"\r\nuse b\r\nuse c\r\n", BAD + b"USING c\r\n")


def test_first_cr_without_lf_hides_the_line_end_until_the_buffer_fills(target: Server):
    with target.connect() as c:
        c.send(b"foo\rbar\r\nuse a\r\n")
        c.expect_silence(0.3)
        c.send(b"z" * 300 + b"\r\nuse d\r\n")
        c.expect(BAD + b"USING d\r\n")


def test_two_commands_in_one_packet_get_replies_in_order(target: Server):
    with target.connect() as c:
        c.request(b"use a\r\nuse b\r\n", b"USING a\r\nUSING b\r\n")


def test_many_pipelined_commands_get_replies_in_order(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        batch = b"".join(b"put 0 0 60 3\r\nj%02d\r\n" % i for i in range(50))
        c.send(batch + b"peek-ready\r\n")
        ids = [int(c.read_line().split()[1]) for _ in range(50)]
        assert ids == list(range(ids[0], ids[0] + 50))
        c.expect(b"FOUND %d 3\r\nj00\r\n" % ids[0])


def test_underscore_in_tube_name(target: Server):
    with target.connect() as c:
        c.request(b"use x_y\r\n", b"USING x_y\r\n")
        c.request(b"use a(b)$+/;.\r\n", b"USING a(b)$+/;.\r\n")


def test_use_tube_long(target: Server):
    with target.connect() as c:
        c.request(b"use " + b"t" * 200 + b"\r\n", b"USING " + b"t" * 200 + b"\r\n")
        c.request(b"use " + b"t" * 201 + b"\r\n", BAD)


def test_longest_command(target: Server, tube: str):
    name = (tube * 20)[:200].encode()
    with target.connect() as c:
        c.request(b"use %s\r\n" % name, b"USING %s\r\n" % name)
        line = b"pause-tube %s 4294967295\r\n" % name
        assert len(line) == 224
        c.request(line, b"PAUSED\r\n")


def test_pause_tube_is_a_bare_prefix(target: Server, tube: str):
    with target.connect() as c:
        c.request(b"use %s\r\n" % tube.encode(), b"USING %s\r\n" % tube.encode())
        c.request(b"pause-tube%s 0\r\n" % tube.encode(), b"PAUSED\r\n")
        c.request(b"pause-tube  %s  0\r\n" % tube.encode(), b"PAUSED\r\n")


def test_quit_with_trailing_text_closes_the_connection(target: Server):
    with target.connect() as c:
        c.send(b"quitxyz\r\n")
        c.expect_closed()


def test_kick_accepts_a_sign_and_trailing_text(target: Server, tube: str):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"kick 5 \r\n", b"KICKED 0\r\n")
        c.request(b"kick -1\r\n", b"KICKED 0\r\n")
        c.request(b"kick  +3abc\r\n", b"KICKED 0\r\n")


def test_reserve_with_timeout_ignores_trailing_text_and_reads_no_digits_as_zero(
    target: Server, tube: str
):
    with target.connect() as c:
        c.use_only(tube)
        c.request(b"reserve-with-timeout abc\r\n", b"TIMED_OUT\r\n")
        c.request(b"reserve-with-timeout 0 junk\r\n", b"TIMED_OUT\r\n")
        c.request(b"reserve-with-timeout 4294967296\r\n", b"TIMED_OUT\r\n")  # int truncation


@pytest.mark.parametrize(
    "line",
    [b"peek 18446744073709551616", b"peek " + b"1" * 50, b"peek foo111", b"peek 111foo",
     b"peek +1", b"peek 1 "],
)  # fmt: skip
def test_peek_bad_format(target: Server, line: bytes):
    with target.connect() as c:
        c.request(line + b"\r\n", BAD)


@pytest.mark.parametrize("verb", [b"delete", b"touch", b"kick-job", b"reserve-job", b"stats-job"])
def test_job_id_commands_bad_format(target: Server, verb: bytes):
    with target.connect() as c:
        for arg in (b"18446744073709551616", b"a111", b"111a", b"!@#!@#", b"1 2"):
            c.request(verb + b" " + arg + b"\r\n", BAD)


def test_bury_bad_format(target: Server):
    with target.connect() as c:
        for line in (b"bury 111abc 2", b"bury 111", b"bury 111 222abc", b"bury 1 4294967296"):
            c.request(line + b"\r\n", BAD)


def test_release_bad_format(target: Server):
    with target.connect() as c:
        for line in (b"release 1x 1 1", b"release 1 x 1", b"release 1 1 x", b"release 1 1"):
            c.request(line + b"\r\n", BAD)
