"""Versioned bytes for commands and outcomes: what travels in the Raft log and over gRPC.

Theory of operation: every command and reply is a frozen dataclass whose fields are ints, strs,
bytes, bools, None, tuples of those, or another such dataclass (a Wakeup's result). The codec
writes a version byte, then one self-describing value: a type tag, then the payload. A dataclass
is written as its class tag (a fixed number from the append-only table below) and its fields in
declaration order.

Rules:
- Tags are never renumbered or reused; new classes are appended with new numbers. A class may
  gain trailing fields with defaults: an older encoding (fewer fields) still decodes.
- Decoding validates every field against the class's type hints, so a malformed or hostile
  command is refused with ``CodecError`` here, at the edge, instead of reaching (and crashing)
  every replica's state machine. It accepts exactly what the encoder writes: integers in int64
  to uint64, varints in their shortest form; so decoded bytes re-encode to the same bytes.
- Pure and deterministic: the same value always gives the same bytes. Standard library only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Final, Union

from statemachine import commands as c
from statemachine import replies as r
from statemachine.commands import Command
from statemachine.replies import Outcome, Reply, Wakeup

FORMAT_VERSION: Final = 1

# Append-only: (tag, class). Commands 1-63, replies 64-119, envelopes 120+.
_TABLE: Final[tuple[tuple[int, type[Any]], ...]] = (
    (1, c.Connect), (2, c.Disconnect), (3, c.RenewLease), (4, c.DropProxy), (5, c.Tick),
    (6, c.Use), (7, c.Watch), (8, c.Ignore), (9, c.ListTubeUsed), (10, c.ListTubesWatched),
    (11, c.Put), (12, c.RejectedPut), (13, c.Reserve), (14, c.ReserveJob), (15, c.Delete),
    (16, c.Release), (17, c.Bury), (18, c.Touch), (19, c.Kick), (20, c.KickJob),
    (21, c.PauseTube), (22, c.Peek), (23, c.PeekReady), (24, c.PeekDelayed), (25, c.PeekBuried),
    (26, c.StatsJob), (27, c.StatsTube), (28, c.Stats), (29, c.ListTubes), (30, c.CheckClients),
    (64, r.Ok), (65, r.Inserted), (66, r.Reserved), (67, r.Waiting), (68, r.DeadlineSoon),
    (69, r.TimedOut), (70, r.Deleted), (71, r.Released), (72, r.Buried), (73, r.Touched),
    (74, r.Kicked), (75, r.Paused), (76, r.Using), (77, r.Watching), (78, r.Found),
    (79, r.TubeList), (80, r.JobStats), (81, r.TubeStats), (82, r.ServerStats),
    (83, r.ClientStates), (84, r.NotFound), (85, r.NotIgnored), (86, r.JobTooBig),
    (87, r.UnknownClient), (88, r.AlreadyWaiting), (89, r.InvalidArgument),
    (120, r.Wakeup), (121, r.Outcome),
)  # fmt: skip
_CLASS_BY_TAG: Final = dict(_TABLE)
_TAG_BY_CLASS: Final = {cls: tag for tag, cls in _TABLE}
_COMMAND_CLASSES: Final = typing.get_args(Command)
_REPLY_CLASSES: Final = typing.get_args(Reply)

_NONE, _TRUE, _FALSE, _INT, _STR, _BYTES, _TUPLE, _OBJECT = b"NTFisbto"
_MAX_DEPTH: Final = 8
_INT_MIN: Final = -(2**63)  # int64 ...
_INT_MAX: Final = 2**64 - 1  # ... to uint64 (beanstalkd's job ids)


class CodecError(ValueError):
    """The bytes are not a valid encoding (truncated, unknown version or tag, wrong types)."""


# --- Encoding ------------------------------------------------------------------------------


def encode_command(command: Command) -> bytes:
    """Encode one command of ``statemachine.commands``."""
    if type(command) is c.Put:
        fast = _encode_put(command)
        if fast is not None:
            return fast
    return _encode_top(command)


def encode_outcome(outcome: Outcome) -> bytes:
    fast = _encode_inserted(outcome)
    return fast if fast is not None else _encode_top(outcome)


def encode_reply(reply: Reply) -> bytes:
    return _encode_top(reply)


def encode_wakeup(wakeup: Wakeup) -> bytes:
    return _encode_top(wakeup)


def _encode_top(value: object) -> bytes:
    out = bytearray([FORMAT_VERSION])
    _encode(value, out)
    return bytes(out)


def _encode(value: object, out: bytearray) -> None:
    if value is None:
        out.append(_NONE)
    elif value is True:
        out.append(_TRUE)
    elif value is False:
        out.append(_FALSE)
    elif isinstance(value, int):
        # int64 and uint64 (beanstalkd job ids are uint64): both fit the zigzag varint.
        if not _INT_MIN <= value <= _INT_MAX:
            raise CodecError(f"integer {value} does not fit in 64 bits")
        out.append(_INT)
        # Zigzag, so small negatives stay short; the same bytes as the int64 form it replaced.
        _write_varint(value << 1 if value >= 0 else (-value << 1) - 1, out)
    elif isinstance(value, str):
        _encode_blob(_STR, value.encode("utf-8"), out)
    elif isinstance(value, bytes):
        _encode_blob(_BYTES, value, out)
    elif isinstance(value, tuple):
        out.append(_TUPLE)
        _write_varint(len(value), out)
        for item in value:
            _encode(item, out)
    else:
        _encode_object(value, out)


def _encode_blob(tag: int, data: bytes, out: bytearray) -> None:
    out.append(tag)
    _write_varint(len(data), out)
    out += data


def _encode_object(value: object, out: bytearray) -> None:
    tag = _TAG_BY_CLASS.get(type(value))
    if tag is None:
        raise CodecError(f"cannot encode a {type(value).__name__}: not in the codec's table")
    out.append(_OBJECT)
    _write_varint(tag, out)
    fields = _hints(type(value))  # cached: dataclasses.fields() builds a tuple per call
    _write_varint(len(fields), out)
    for name, _, _ in fields:
        _encode(getattr(value, name), out)


def _write_varint(number: int, out: bytearray) -> None:
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)


# --- Decoding ------------------------------------------------------------------------------


def decode_command(data: bytes) -> Command:
    """Decode and validate a command; raise CodecError when ``data`` is not one."""
    if data[:4] == _PUT_HEAD and type(data) is bytes:  # the body is sliced out as bytes
        put = _decode_put(data)
        if put is not None:
            return put
    value = _decode_top(data)
    if not isinstance(value, _COMMAND_CLASSES):
        raise CodecError(f"expected a command, got a {type(value).__name__}")
    return typing.cast(Command, value)


def decode_outcome(data: bytes) -> Outcome:
    if data[:8] == _INSERTED_HEAD:
        inserted = _decode_inserted(data)
        if inserted is not None:
            return inserted
    value = _decode_top(data)
    if not isinstance(value, Outcome):
        raise CodecError(f"expected an Outcome, got a {type(value).__name__}")
    return value


def decode_reply(data: bytes) -> Reply:
    value = _decode_top(data)
    if not isinstance(value, _REPLY_CLASSES):
        raise CodecError(f"expected a reply, got a {type(value).__name__}")
    return typing.cast(Reply, value)


def decode_wakeup(data: bytes) -> Wakeup:
    value = _decode_top(data)
    if not isinstance(value, Wakeup):
        raise CodecError(f"expected a Wakeup, got a {type(value).__name__}")
    return value


def _decode_top(data: bytes) -> object:
    if not data:
        raise CodecError("empty encoding")
    if data[0] != FORMAT_VERSION:
        raise CodecError(f"unknown codec version {data[0]} (this build reads {FORMAT_VERSION})")
    value, pos = _read(bytes(data), 1, 0)
    if pos != len(data):
        raise CodecError(f"{len(data) - pos} trailing bytes after the value")
    return value


# The reader is plain functions over (bytes, position) rather than methods on a reader object:
# every command crosses it two or three times on its way through the cluster, and attribute
# and method lookups per byte were most of its cost.


def _read(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    """The value starting at ``pos`` and the position after it."""
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if pos >= len(data):
        raise CodecError("truncated encoding")
    tag = data[pos]
    pos += 1
    if tag == _INT:
        raw, pos = _read_varint(data, pos)
        value = (raw >> 1) ^ -(raw & 1)
        if not _INT_MIN <= value <= _INT_MAX:  # what the encoder refuses, the decoder refuses
            raise CodecError(f"integer {value} does not fit in 64 bits")
        return value, pos
    if tag in (_STR, _BYTES):
        size, pos = _read_varint(data, pos)
        stop = pos + size
        if stop > len(data):
            raise CodecError("truncated encoding")
        if tag == _BYTES:
            return data[pos:stop], stop
        try:
            return data[pos:stop].decode("utf-8"), stop
        except UnicodeDecodeError as exc:
            raise CodecError(f"string is not UTF-8: {exc}") from None
    if tag == _NONE:
        return None, pos
    if tag in (_TRUE, _FALSE):
        return tag == _TRUE, pos
    if tag == _TUPLE:
        count, pos = _read_varint(data, pos)
        items = []
        for _ in range(count):
            item, pos = _read(data, pos, depth + 1)
            items.append(item)
        return tuple(items), pos
    if tag == _OBJECT:
        return _read_object(data, pos, depth)
    raise CodecError(f"unknown value tag {tag}")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data) and data[pos] < 0x80:  # one byte: nearly every varint
        return data[pos], pos + 1
    number = shift = 0
    while True:
        if pos >= len(data):
            raise CodecError("truncated encoding")
        b = data[pos]
        pos += 1
        number |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0:  # a trailing zero group: the value had a shorter (the canonical) form
                raise CodecError("varint is not in its shortest form")
            return number, pos
        shift += 7
        if shift > 70:
            raise CodecError("varint too long")


def _read_object(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    class_tag, pos = _read_varint(data, pos)
    cls = _CLASS_BY_TAG.get(class_tag)
    if cls is None:
        raise CodecError(f"unknown class tag {class_tag}")
    count, pos = _read_varint(data, pos)
    hints = _hints(cls)
    if count > len(hints):
        raise CodecError(f"{cls.__name__} has {len(hints)} fields, got {count}")
    values = []
    for name, hint, conforms in hints[:count]:
        item, pos = _read(data, pos, depth + 1)
        if not conforms(item):
            raise CodecError(f"{cls.__name__}.{name}: {item!r:.60} is not a {hint}")
        values.append(item)
    try:
        return cls(*values), pos
    except TypeError as exc:  # a missing field that has no default
        raise CodecError(f"{cls.__name__}: {exc}") from None


_Check = Callable[[object], bool]
_HINT_CACHE: dict[type[Any], list[tuple[str, Any, _Check]]] = {}


def _hints(cls: type[Any]) -> list[tuple[str, Any, _Check]]:
    """Each field's name, type hint and a check compiled from the hint (see ``_checker``)."""
    cached = _HINT_CACHE.get(cls)
    if cached is None:
        resolved = typing.get_type_hints(cls)
        cached = [
            (f.name, resolved[f.name], _checker(resolved[f.name])) for f in dataclasses.fields(cls)
        ]
        _HINT_CACHE[cls] = cached
    return cached


def _checker(hint: Any) -> _Check:
    """Whether a decoded value matches the type hint ``hint`` (the shapes our dataclasses
    use), decided once per hint: a decoder checks every field of every value, and walking the
    hint with ``typing.get_origin`` each time (an Outcome's reply is a union of some thirty
    classes) was about half of the decoding time. A hint of another shape matches nothing."""
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bytes, bool, type(None)):
        exact: type[Any] = hint
        return lambda value: type(value) is exact
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(hint)
        classes = tuple(a for a in arms if isinstance(a, type) and dataclasses.is_dataclass(a))
        others = [_checker(a) for a in arms if a not in classes]
        return lambda value: isinstance(value, classes) or any(check(value) for check in others)
    if origin is tuple:
        item = _checker(typing.get_args(hint)[0])
        return lambda value: isinstance(value, tuple) and all(item(v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return lambda value: isinstance(value, hint)
    return lambda value: False


# --- The put's own path --------------------------------------------------------------------
#
# A put crosses this codec seven times on its way through the cluster: the proxy encodes it
# and decodes its outcome; the leader decodes it at the edge and encodes its outcome; each
# follower decodes it and encodes the outcome. About a seventh of a put's CPU over the five
# processes went here (docs/benchmarks.md). For the two shapes that carry nearly all of that
# traffic, a Put and an Outcome that is an Inserted without wake-ups, the functions below
# write and read the very bytes of the generic code above, unrolled: about half the time.
# They recognise only well-formed values of exactly those shapes. Anything else, malformed
# or merely unusual, goes to the generic code, which decides and says why: so they return
# only what it would return (tests/cluster/test_codec.py checks this).

_PUT_FIELDS: Final = len(dataclasses.fields(c.Put))
_PUT_HEAD: Final = bytes([FORMAT_VERSION, _OBJECT, _TAG_BY_CLASS[c.Put], _PUT_FIELDS])
_INSERTED_HEAD: Final = bytes(
    [FORMAT_VERSION, _OBJECT, _TAG_BY_CLASS[Outcome], len(dataclasses.fields(Outcome))]
) + bytes([_OBJECT, _TAG_BY_CLASS[r.Inserted], len(dataclasses.fields(r.Inserted)), _INT])
_NO_WAKEUPS: Final = bytes([_TUPLE, 0])


def _encode_put(put: c.Put) -> bytes | None:
    """The generic encoding of ``put``, or None when a field is not of its plain type."""
    tube, body, client_id, request_id = put.tube, put.body, put.client_id, put.request_id
    if not (type(tube) is type(client_id) is type(request_id) is str and type(body) is bytes):
        return None
    out = bytearray(_PUT_HEAD)
    _encode_blob(_STR, tube.encode("utf-8"), out)
    for number in (put.priority, put.delay_ms, put.ttr_ms):
        if type(number) is not int or not _INT_MIN <= number <= _INT_MAX:
            return None
        out.append(_INT)
        _write_varint(number << 1 if number >= 0 else (-number << 1) - 1, out)
    _encode_blob(_BYTES, body, out)
    _encode_blob(_STR, client_id.encode("utf-8"), out)
    _encode_blob(_STR, request_id.encode("utf-8"), out)
    return bytes(out)


def _decode_put(data: bytes) -> c.Put | None:
    """The Put that ``data`` (starting with _PUT_HEAD) encodes, or None to leave it to the
    generic reader."""
    try:
        tube, pos = _fast_blob(data, len(_PUT_HEAD), _STR)
        priority, pos = _fast_int(data, pos)
        delay_ms, pos = _fast_int(data, pos)
        ttr_ms, pos = _fast_int(data, pos)
        body, pos = _fast_blob(data, pos, _BYTES)
        client_id, pos = _fast_blob(data, pos, _STR)
        request_id, pos = _fast_blob(data, pos, _STR)
        if pos != len(data):
            return None
        return c.Put(
            tube.decode("utf-8"),
            priority,
            delay_ms,
            ttr_ms,
            body,
            client_id.decode("utf-8"),
            request_id.decode("utf-8"),
        )
    except (IndexError, ValueError):  # truncated, not the shape, not UTF-8: CodecError is one
        return None


def _encode_inserted(outcome: Outcome) -> bytes | None:
    reply, wakeups = outcome.reply, outcome.wakeups
    if type(reply) is not r.Inserted or type(wakeups) is not tuple or wakeups:
        return None
    job_id = reply.job_id
    if type(job_id) is not int or not 0 <= job_id <= _INT_MAX:
        return None
    out = bytearray(_INSERTED_HEAD)
    _write_varint(job_id << 1, out)
    out += _NO_WAKEUPS
    return bytes(out)


def _decode_inserted(data: bytes) -> Outcome | None:
    try:
        job_id, pos = _fast_int(data, len(_INSERTED_HEAD) - 1)
    except (IndexError, ValueError):
        return None
    if data[pos:] != _NO_WAKEUPS:
        return None
    return Outcome(r.Inserted(job_id))


def _fast_int(data: bytes, pos: int) -> tuple[int, int]:
    if data[pos] != _INT:
        raise CodecError("not an integer")
    raw = data[pos + 1]
    if raw >= 0x80:
        raw, end = _read_varint(data, pos + 1)
    else:
        end = pos + 2
    value = (raw >> 1) ^ -(raw & 1)
    if not _INT_MIN <= value <= _INT_MAX:
        raise CodecError("integer out of range")
    return value, end


def _fast_blob(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    if data[pos] != tag:
        raise CodecError("not the expected tag")
    size = data[pos + 1]
    if size >= 0x80:
        size, start = _read_varint(data, pos + 1)
    else:
        start = pos + 2
    stop = start + size
    if stop > len(data):
        raise CodecError("truncated encoding")
    return data[start:stop], stop
