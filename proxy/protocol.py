"""beanstalkd's text protocol without I/O: bytes in, events out.

Theory of operation (as h11 does it): a ``BeanstalkConnection`` holds one client's unparsed
bytes. ``receive_data`` appends what the socket delivered; ``next_event`` returns the next
complete event (a parsed command, or an error the server must reply with) or ``NEED_DATA``.
Replies are rendered by ``proxy.render``. Nothing here touches a socket, a clock or the queue.

The parser reproduces beanstalkd 1.12's ``prot.c`` byte for byte, including its quirks
(beanstalkd 1.12's protocol.txt, each rule checked against the binary):

- A command line lives in a 224-byte buffer. Its end is found by ``scan_line_end``: the FIRST
  ``\\r`` in the buffer, which must be followed by ``\\n``. A full buffer without a line end is
  discarded, and discarding goes on in 224-byte windows until a window holds a line end; then
  the reply is ``BAD_FORMAT`` and what follows that line end is the next command.
- Commands are matched case-sensitively by prefix in ``prot.c``'s order; argument-less ones must
  be the whole line (else ``BAD_FORMAT``); ``quit`` and ``pause-tube`` are bare prefixes.
- Integers: spaces skipped, the first character must be a digit, no overflow of the field, the
  last argument must end the line. ``reserve-with-timeout`` uses ``strtol`` (any trailing text,
  a sign, truncation to a C int); ``kick`` uses ``strtoul`` (a sign wraps, trailing text ignored).
- ``put``: four numbers parse -> counted; size above max-job-size -> ``bytes + 2`` bytes are
  discarded, then ``JOB_TOO_BIG``; trailing garbage -> ``BAD_FORMAT`` without skipping the body;
  otherwise ``bytes + 2`` bytes are read and must end in CRLF (else ``EXPECTED_CRLF``, and the
  bytes after them are parsed as the next command).

Rule: the codec knows beanstalkd's limits and units (seconds); the session converts to ms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from proxy.events import (
    NEED_DATA,
    Bury,
    Delete,
    Event,
    Ignore,
    Kick,
    KickJob,
    ListTubes,
    ListTubesWatched,
    ListTubeUsed,
    NeedData,
    PauseTube,
    Peek,
    PeekBuried,
    PeekDelayed,
    PeekReady,
    ProtocolError,
    Put,
    Quit,
    RejectedPut,
    Release,
    Reserve,
    ReserveJob,
    Stats,
    StatsJob,
    StatsTube,
    Touch,
    Use,
    Watch,
)

# --- beanstalkd's limits (dat.h) ------------------------------------------------------------

TUBE_NAME_MAX: Final = 200  # MAX_TUBE_NAME_LEN - 1
LINE_BUF_SIZE: Final = 224  # 11 + MAX_TUBE_NAME_LEN + 12, CRLF included
JOB_SIZE_DEFAULT: Final = 65_535
JOB_SIZE_LIMIT: Final = 1_073_741_824  # the largest -z beanstalkd accepts
UINT32_MAX: Final = 2**32 - 1
UINT64_MAX: Final = 2**64 - 1
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
NAME_CHARS: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"
)
_C_SPACE: Final = b" \t\n\v\f\r"  # isspace() in the C locale, for strtol and strtoul


# --- Error replies the codec decides on its own --------------------------------------------

BAD_FORMAT: Final = b"BAD_FORMAT\r\n"
UNKNOWN_COMMAND: Final = b"UNKNOWN_COMMAND\r\n"
EXPECTED_CRLF: Final = b"EXPECTED_CRLF\r\n"
JOB_TOO_BIG: Final = b"JOB_TOO_BIG\r\n"


class _Continue:
    """A parser changed state (put now reads or skips a body): keep going."""


_CONTINUE: Final = _Continue()

# Parser states.
_LINE, _DISCARD_LINE, _BODY, _SKIP = range(4)


class BeanstalkConnection:
    """One client connection's parser. Feed bytes with ``receive_data``; pull events with
    ``next_event`` until it returns ``NEED_DATA``."""

    def __init__(self, max_job_size: int = JOB_SIZE_DEFAULT) -> None:
        if not 0 <= max_job_size <= JOB_SIZE_LIMIT:
            raise ValueError(f"max_job_size must be 0..{JOB_SIZE_LIMIT}, got {max_job_size}")
        self.max_job_size = max_job_size
        self._buf = bytearray()
        self._pos = 0  # bytes before _pos are consumed; compacted lazily
        self._state = _LINE
        self._put: tuple[int, int, int, int] | None = None  # pri, delay, ttr, size
        self._skip_remaining = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet consumed (for read backpressure)."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event | NeedData:
        while True:
            if self._state == _SKIP:
                if not self._skip():
                    return NEED_DATA
                self._state = _LINE
                return RejectedPut(JOB_TOO_BIG, producer=False)
            if self._state == _BODY:
                return self._body()
            line = self._line()
            if line is None:
                if self.buffered_bytes < LINE_BUF_SIZE:
                    return NEED_DATA
                # A full buffer and no line end: beanstalkd throws the window away and goes on
                # discarding until a line ends (issue #337).
                self._pos += LINE_BUF_SIZE
                self._state = _DISCARD_LINE
                continue
            if self._state == _DISCARD_LINE:
                self._state = _LINE
                return ProtocolError(BAD_FORMAT)
            event = self._command(line)
            if not isinstance(event, _Continue):
                return event

    # --- framing ------------------------------------------------------------------------------

    def _line(self) -> bytes | None:
        """The next line without its CRLF, found as ``scan_line_end`` does, or None."""
        end = min(len(self._buf), self._pos + LINE_BUF_SIZE)
        cr = self._buf.find(b"\r", self._pos, end - 1)
        if cr < 0 or self._buf[cr + 1] != 0x0A:
            return None
        line = bytes(self._buf[self._pos : cr])
        self._pos = cr + 2
        return line

    def _skip(self) -> bool:
        take = min(self.buffered_bytes, self._skip_remaining)
        self._pos += take
        self._skip_remaining -= take
        return self._skip_remaining == 0

    def _body(self) -> Event | NeedData:
        assert self._put is not None
        priority, delay_s, ttr_s, size = self._put
        if self.buffered_bytes < size + 2:
            return NEED_DATA
        chunk = bytes(self._buf[self._pos : self._pos + size + 2])
        self._pos += size + 2
        self._state = _LINE
        self._put = None
        if chunk[-2:] != b"\r\n":
            return RejectedPut(EXPECTED_CRLF, producer=True)
        return Put(priority, delay_s, ttr_s, chunk[:-2])

    # --- commands -----------------------------------------------------------------------------

    def _command(self, line: bytes) -> Event | _Continue:
        if b"\x00" in line:  # prot.c: "check for possible maliciousness"
            return ProtocolError(BAD_FORMAT)
        # Fast path: the common lines are a known word then a space, or a bare word alone;
        # both give exactly what the ordered scan below gives (tested against it).
        word, space, rest = line.partition(b" ")
        fast = _BY_WORD.get(word + space)
        if fast is not None:
            result = fast(self, rest)
            return ProtocolError(BAD_FORMAT) if result is None else result
        return self._scan(line)

    def _scan(self, line: bytes) -> Event | _Continue:
        """prot.c's which_cmd: the first prefix in order that the line starts with."""
        for prefix, parse in _COMMANDS:
            if line.startswith(prefix):
                result = parse(self, line[len(prefix) :])
                return ProtocolError(BAD_FORMAT) if result is None else result
        return ProtocolError(UNKNOWN_COMMAND)

    def _parse_put(self, rest: bytes) -> Event | _Continue | None:
        numbers = _read_uints(rest, (UINT32_MAX,) * 4, exact=False)
        if numbers is None:
            return None
        (priority, delay_s, ttr_s, size), end = numbers
        if size > self.max_job_size:
            self._state = _SKIP
            self._skip_remaining = size + 2
            return _CONTINUE
        if end != len(rest):
            return RejectedPut(BAD_FORMAT, producer=False)
        self._state = _BODY
        self._put = (priority, delay_s, ttr_s, size)
        return _CONTINUE


# --- Argument parsers (beanstalkd's read_u32 / read_u64 / strtol / strtoul) -------------------


def _read_uint(data: bytes, pos: int, max_value: int) -> tuple[int, int] | None:
    """read_u32/read_u64: skip spaces, a digit first, the value within ``max_value``."""
    while pos < len(data) and data[pos] == 0x20:
        pos += 1
    start = pos
    while pos < len(data) and 0x30 <= data[pos] <= 0x39:
        pos += 1
    if pos == start:
        return None
    value = int(data[start:pos])
    return (value, pos) if value <= max_value else None


def _read_uints(
    data: bytes, limits: tuple[int, ...], exact: bool = True
) -> tuple[tuple[int, ...], int] | None:
    """Several integers in a row; with ``exact`` the last must end the line."""
    values = []
    pos = 0
    for limit in limits:
        parsed = _read_uint(data, pos, limit)
        if parsed is None:
            return None
        value, pos = parsed
        values.append(value)
    if exact and pos != len(data):
        return None
    return tuple(values), pos


def _c_strto(data: bytes) -> int | None:
    """strtol/strtoul's scan: leading C whitespace, a sign, decimal digits; the signed value,
    or None when there are no digits."""
    pos = 0
    while pos < len(data) and data[pos] in _C_SPACE:
        pos += 1
    negative = pos < len(data) and data[pos] == 0x2D
    if pos < len(data) and data[pos] in b"+-":
        pos += 1
    start = pos
    while pos < len(data) and 0x30 <= data[pos] <= 0x39:
        pos += 1
    if pos == start:
        return None
    value = int(data[start:pos])
    return -value if negative else value


def is_valid_tube(name: bytes) -> bool:
    """beanstalkd's is_valid_tube: 1..200 name characters, not starting with '-'."""
    return (
        0 < len(name) <= TUBE_NAME_MAX
        and all(byte in NAME_CHARS for byte in name)
        and name[0] != 0x2D
    )


def _job_id(rest: bytes) -> int | None:
    parsed = _read_uints(rest, (UINT64_MAX,))
    return None if parsed is None else parsed[0][0]


def _tube(rest: bytes) -> str | None:
    return rest.decode("ascii") if is_valid_tube(rest) else None


_Parser = Callable[["BeanstalkConnection", bytes], "Event | _Continue | None"]


def _id_command(cls: Callable[[int], Event]) -> _Parser:
    def parse(_: BeanstalkConnection, rest: bytes) -> Event | None:
        job_id = _job_id(rest)
        return None if job_id is None else cls(job_id)

    return parse


def _tube_command(cls: Callable[[str], Event]) -> _Parser:
    def parse(_: BeanstalkConnection, rest: bytes) -> Event | None:
        tube = _tube(rest)
        return None if tube is None else cls(tube)

    return parse


def _bare_command(event: Event) -> _Parser:
    def parse(_: BeanstalkConnection, rest: bytes) -> Event | None:
        return event if rest == b"" else None

    return parse


def _parse_reserve_with_timeout(_: BeanstalkConnection, rest: bytes) -> Event | None:
    # 1.12: timeout = strtol(...) with only errno checked, then passed as a C int: no digits
    # means 0, trailing text is ignored, and a negative int waits forever.
    scanned = _c_strto(rest)
    value = 0 if scanned is None else scanned
    if not _LONG_MIN <= value <= _LONG_MAX:
        return None
    as_int = (value + 2**31) % 2**32 - 2**31
    return Reserve(timeout_s=None if as_int < 0 else as_int, with_timeout=True)


def _parse_kick(_: BeanstalkConnection, rest: bytes) -> Event | None:
    # strtoul: a sign is accepted (negatives wrap), trailing text ignored, ERANGE on overflow;
    # the result is then stored in a 32-bit unsigned int.
    scanned = _c_strto(rest)
    if scanned is None or abs(scanned) > UINT64_MAX:
        return None
    return Kick(bound=scanned % 2**64 % 2**32)


def _parse_release(_: BeanstalkConnection, rest: bytes) -> Event | None:
    parsed = _read_uints(rest, (UINT64_MAX, UINT32_MAX, UINT32_MAX))
    return None if parsed is None else Release(*parsed[0])


def _parse_bury(_: BeanstalkConnection, rest: bytes) -> Event | None:
    parsed = _read_uints(rest, (UINT64_MAX, UINT32_MAX))
    return None if parsed is None else Bury(*parsed[0])


def _parse_pause_tube(_: BeanstalkConnection, rest: bytes) -> Event | None:
    # Bare prefix: spaces skipped, the name runs while name characters do, then the delay.
    pos = 0
    while pos < len(rest) and rest[pos] == 0x20:
        pos += 1
    start = pos
    while pos < len(rest) and rest[pos] in NAME_CHARS:
        pos += 1
    name = rest[start:pos]
    parsed = _read_uints(rest[pos:], (UINT32_MAX,))
    if not is_valid_tube(name) or parsed is None:
        return None
    return PauseTube(tube=name.decode("ascii"), delay_s=parsed[0][0])


# prot.c's which_cmd order matters: "peek " before "peek-ready", "reserve-with-timeout " and
# "reserve-job " before "reserve", "stats-job " and "stats-tube " before "stats".
_COMMANDS: Final[tuple[tuple[bytes, _Parser], ...]] = (
    (b"put ", BeanstalkConnection._parse_put),
    (b"peek ", _id_command(Peek)),
    (b"peek-ready", _bare_command(PeekReady())),
    (b"peek-delayed", _bare_command(PeekDelayed())),
    (b"peek-buried", _bare_command(PeekBuried())),
    (b"reserve-with-timeout ", _parse_reserve_with_timeout),
    (b"reserve-job ", _id_command(ReserveJob)),
    (b"reserve", _bare_command(Reserve(timeout_s=None))),
    (b"delete ", _id_command(Delete)),
    (b"release ", _parse_release),
    (b"bury ", _parse_bury),
    (b"kick ", _parse_kick),
    (b"kick-job ", _id_command(KickJob)),
    (b"touch ", _id_command(Touch)),
    (b"stats-job ", _id_command(StatsJob)),
    (b"stats-tube ", _tube_command(StatsTube)),
    (b"stats", _bare_command(Stats())),
    (b"use ", _tube_command(Use)),
    (b"watch ", _tube_command(Watch)),
    (b"ignore ", _tube_command(Ignore)),
    (b"list-tubes-watched", _bare_command(ListTubesWatched())),
    (b"list-tube-used", _bare_command(ListTubeUsed())),
    (b"list-tubes", _bare_command(ListTubes())),
    (b"quit", lambda _conn, _rest: Quit()),
    (b"pause-tube", _parse_pause_tube),
)

# Lines "WORD REST" for WORD+" " a prefix above, and bare words alone: no earlier prefix in
# _COMMANDS can match such a line, so the table gives what the scan gives.
_BY_WORD: Final[dict[bytes, _Parser]] = {
    prefix: parse
    for prefix, parse in _COMMANDS
    if prefix.endswith(b" ") or prefix not in (b"quit", b"pause-tube")
}
