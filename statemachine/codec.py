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
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, Final, Union

from statemachine import commands as c
from statemachine import records as rec
from statemachine import replies as r
from statemachine.commands import Command
from statemachine.replies import Outcome, Reply, Wakeup

FORMAT_VERSION: Final = 1
_VERSION: Final = bytes([FORMAT_VERSION])

# Append-only: (tag, class). Commands 1-63, replies 64-119, envelopes 120+.
_TABLE: Final[tuple[tuple[int, type[Any]], ...]] = (
    (1, c.Connect), (2, c.Disconnect), (3, c.RenewLease), (4, c.DropProxy), (5, c.Tick),
    (6, c.Use), (7, c.Watch), (8, c.Ignore), (9, c.ListTubeUsed), (10, c.ListTubesWatched),
    (11, c.Put), (12, c.RejectedPut), (13, c.Reserve), (14, c.ReserveJob), (15, c.Delete),
    (16, c.Release), (17, c.Bury), (18, c.Touch), (19, c.Kick), (20, c.KickJob),
    (21, c.PauseTube), (22, c.Peek), (23, c.PeekReady), (24, c.PeekDelayed), (25, c.PeekBuried),
    (26, c.StatsJob), (27, c.StatsTube), (28, c.Stats), (29, c.ListTubes), (30, c.CheckClients),
    (31, c.ExtendLeases), (32, c.RunJob), (33, c.ReportJobStart), (34, c.ReportJobEnd),
    (35, c.StopJob), (36, c.SetRecordRetention), (40, rec.JobSummary), (41, rec.AttemptResult),
    (64, r.Ok), (65, r.Inserted), (66, r.Reserved), (67, r.Waiting), (68, r.DeadlineSoon),
    (69, r.TimedOut), (70, r.Deleted), (71, r.Released), (72, r.Buried), (73, r.Touched),
    (74, r.Kicked), (75, r.Paused), (76, r.Using), (77, r.Watching), (78, r.Found),
    (79, r.TubeList), (80, r.JobStats), (81, r.TubeStats), (82, r.ServerStats),
    (83, r.ClientStates), (84, r.NotFound), (85, r.NotIgnored), (86, r.JobTooBig),
    (87, r.UnknownClient), (88, r.AlreadyWaiting), (89, r.InvalidArgument),
    (90, r.JobStarted), (91, r.NotRunning), (92, rec.RecordView), (93, rec.JobRecord),
    (94, r.StopRequested),
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
    fast = _encode_flat_top(command)
    return fast if fast is not None else _encode_top(command)


def encode_outcome(outcome: Outcome) -> bytes:
    fast = _encode_outcome_flat(outcome)
    return fast if fast is not None else _encode_top(outcome)


def encode_reply(reply: Reply) -> bytes:
    return _encode_top(reply)


def encode_wakeup(wakeup: Wakeup) -> bytes:
    return _encode_top(wakeup)


def encode_value(value: object) -> bytes:
    """Encode any value of the table (a snapshot's job records)."""
    return _encode_top(value)


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
    if type(data) is bytes and data[:1] == _VERSION:  # bytes: fields are sliced out of it
        flat = _decode_flat(data, 1, _FLAT_COMMANDS)
        if flat is not None and flat[1] == len(data):
            return typing.cast(Command, flat[0])
    value = _decode_top(data)
    if not isinstance(value, _COMMAND_CLASSES):
        raise CodecError(f"expected a command, got a {type(value).__name__}")
    return typing.cast(Command, value)


def decode_outcome(data: bytes) -> Outcome:
    if type(data) is bytes and data[:4] == _OUTCOME_HEAD:
        flat = _decode_flat(data, 4, _FLAT_REPLIES)
        if flat is not None and data[flat[1] :] == _NO_WAKEUPS:
            return Outcome(typing.cast(Reply, flat[0]))
    value = _decode_top(data)
    if not isinstance(value, Outcome):
        raise CodecError(f"expected an Outcome, got a {type(value).__name__}")
    return value


def decode_reply(data: bytes) -> Reply:
    value = _decode_top(data)
    if not isinstance(value, _REPLY_CLASSES):
        raise CodecError(f"expected a reply, got a {type(value).__name__}")
    return typing.cast(Reply, value)


def decode_value(data: bytes) -> object:
    """Decode and validate any value of the table; the caller checks its type."""
    return _decode_top(data)


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


# --- Flat values' own path ----------------------------------------------------------------
#
# A put crosses this codec seven times on its way through the cluster: the proxy encodes it
# and decodes its outcome; the leader decodes it at the edge and encodes its outcome; each
# follower decodes it and encodes the outcome. That was about a seventh of a put's CPU over
# the five processes (docs/benchmarks.md). Nearly all of that traffic is flat: a class whose
# fields are ints, strs, bytes, bools or optional ints (Put, Reserve, Delete; Inserted,
# Reserved, Deleted), alone or as the reply of an Outcome without wake-ups. For those, the
# functions below write and read the very bytes of the generic code above with one loop over
# the fields' kinds, known per class, instead of a dispatch and a type check per field. Decoding
# takes a third to two thirds less time, encoding an outcome a quarter to
# a half less; encoding a command gains little. They take only well-formed values of exactly
# those shapes. Anything else, malformed or merely unusual, goes to the generic code, which
# decides and says why; so they return only what it would return (tests/cluster/test_codec.py
# checks this).

# A field's kind is the tag its value is written with, or (negative, so that no byte read
# equals it) one of the two that take either of two tags.
_K_INT, _K_STR, _K_BYTES, _K_BOOL, _K_INT_OR_NONE = _INT, _STR, _BYTES, -1, -2
_KIND_BY_HINT: Final[dict[Any, int]] = {
    int: _K_INT,
    str: _K_STR,
    bytes: _K_BYTES,
    bool: _K_BOOL,
    int | None: _K_INT_OR_NONE,
}
_OUTCOME_HEAD: Final = bytes(
    [FORMAT_VERSION, _OBJECT, _TAG_BY_CLASS[Outcome], len(dataclasses.fields(Outcome))]
)
_NO_WAKEUPS: Final = bytes([_TUPLE, 0])
_Flat = tuple[bytes, tuple[int, ...], Callable[[Any], tuple[Any, ...]]]
_FLAT_CACHE: dict[type[Any], _Flat | None] = {}


def _flat(cls: type[Any]) -> _Flat | None:
    """For a flat class with a one-byte tag: its object header (tag, class tag, field count),
    its fields' kinds, and a getter of its field values in order. None for any other class."""
    if cls in _FLAT_CACHE:
        return _FLAT_CACHE[cls]
    tag = _TAG_BY_CLASS.get(cls)
    flat: _Flat | None = None
    if tag is not None and tag < 0x80:
        hints = _hints(cls)
        found = [_KIND_BY_HINT.get(hint) for _, hint, _ in hints]
        kinds = tuple(kind for kind in found if kind is not None)
        if len(kinds) == len(found):
            names = tuple(name for name, _, _ in hints)
            flat = (bytes([_OBJECT, tag, len(kinds)]), kinds, _getter(names))
    _FLAT_CACHE[cls] = flat
    return flat


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The field values of an object, in order, as a tuple."""
    if len(names) > 1:
        return operator.attrgetter(*names)  # one C call
    return lambda value: tuple(getattr(value, name) for name in names)  # attrgetter of one
    # name would give the value itself, not a 1-tuple


_FLAT_COMMANDS: Final = {
    tag: cls for tag, cls in _TABLE if cls in _COMMAND_CLASSES and _flat(cls) is not None
}
_FLAT_REPLIES: Final = {
    tag: cls for tag, cls in _TABLE if cls in _REPLY_CLASSES and _flat(cls) is not None
}


def _encode_flat_top(value: object, head: bytes = _VERSION, tail: bytes = b"") -> bytes | None:
    cls = type(value)
    flat = _FLAT_CACHE[cls] if cls in _FLAT_CACHE else _flat(cls)
    if flat is None:
        return None
    prefix, kinds, fields = flat
    out = bytearray(head)
    out += prefix
    for kind, item in zip(kinds, fields(value), strict=True):
        item_type = type(item)
        if item_type is str and kind == _K_STR:
            _encode_blob(_STR, item.encode("utf-8"), out)
        elif item_type is int and kind in (_K_INT, _K_INT_OR_NONE):
            if not _INT_MIN <= item <= _INT_MAX:
                return None
            out.append(_INT)
            _write_varint(item << 1 if item >= 0 else (-item << 1) - 1, out)
        elif item_type is bytes and kind == _K_BYTES:
            _encode_blob(_BYTES, item, out)
        elif item_type is bool and kind == _K_BOOL:
            out.append(_TRUE if item else _FALSE)
        elif item is None and kind == _K_INT_OR_NONE:
            out.append(_NONE)
        else:
            return None  # a field that is not its plain type: the generic code decides
    out += tail
    return bytes(out)


def _encode_outcome_flat(outcome: Outcome) -> bytes | None:
    wakeups = outcome.wakeups
    if type(outcome) is not Outcome or type(wakeups) is not tuple or wakeups:
        return None
    return _encode_flat_top(outcome.reply, _OUTCOME_HEAD, _NO_WAKEUPS)


def _decode_flat(data: bytes, pos: int, classes: dict[int, type[Any]]) -> tuple[object, int] | None:
    """The value of one of ``classes`` whose object tag is at ``pos`` and the position after
    it, or None to leave it to the generic reader."""
    try:
        if data[pos] != _OBJECT:
            return None
        cls = classes.get(data[pos + 1])
        if cls is None:
            return None
        kinds = _FLAT_CACHE[cls][1]  # type: ignore[index]  # every class here is flat
        if data[pos + 2] != len(kinds):  # an older, shorter encoding: the generic reader
            return None
        values, pos = _read_fields(data, pos + 3, kinds)
        return cls(*values), pos
    except (IndexError, ValueError):  # truncated, not the shape, not UTF-8: CodecError is one
        return None


def _read_fields(data: bytes, pos: int, kinds: tuple[int, ...]) -> tuple[list[object], int]:
    values: list[object] = []
    for kind in kinds:
        tag = data[pos]
        if tag == kind or (tag == _INT and kind == _K_INT_OR_NONE):
            if tag == _INT:
                raw = data[pos + 1]
                if raw >= 0x80:
                    raw, pos = _read_varint(data, pos + 1)
                else:
                    pos += 2
                value = (raw >> 1) ^ -(raw & 1)
                if not _INT_MIN <= value <= _INT_MAX:
                    raise CodecError("integer out of range")
                values.append(value)
                continue
            size = data[pos + 1]  # a str or bytes
            if size >= 0x80:
                size, start = _read_varint(data, pos + 1)
            else:
                start = pos + 2
            pos = start + size
            if pos > len(data):
                raise CodecError("truncated encoding")
            values.append(data[start:pos].decode("utf-8") if tag == _STR else data[start:pos])
        elif kind == _K_BOOL and tag in (_TRUE, _FALSE):
            values.append(tag == _TRUE)
            pos += 1
        elif kind == _K_INT_OR_NONE and tag == _NONE:
            values.append(None)
            pos += 1
        else:
            raise CodecError("not the field's plain kind")
    return values, pos
