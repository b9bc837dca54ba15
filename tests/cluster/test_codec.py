"""The command/outcome codec: round trips, stability of the bytes, and refusal of bad input."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beanraft import native
from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
texts = st.text(max_size=20)


def _commands() -> st.SearchStrategy[c.Command]:
    return st.one_of(
        st.builds(c.Put, texts, ints, ints, ints, st.binary(max_size=64), texts, texts),
        st.builds(c.Reserve, texts, st.one_of(st.none(), ints), texts, st.booleans()),
        st.builds(c.CheckClients, texts, st.lists(texts, max_size=4).map(tuple)),
        st.builds(c.Release, texts, ints, ints, ints),
        st.just(c.Tick()),
        st.just(c.Stats()),
    )


@settings(max_examples=200, deadline=None)
@given(_commands())
def test_every_command_round_trips_to_an_equal_command(command: c.Command) -> None:
    assert codec.decode_command(codec.encode_command(command)) == command


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), texts, texts)
def test_outcome_with_wakeups_round_trips(body: bytes, client: str, request: str) -> None:
    outcome = r.Outcome(
        r.Inserted(7),
        (
            r.Wakeup(client, "p1", request, r.Reserved(3, body)),
            r.Wakeup(client, "p", "", r.TimedOut()),
        ),
    )
    assert codec.decode_outcome(codec.encode_outcome(outcome)) == outcome


def test_encoding_is_stable_bytes_so_replicas_and_versions_agree() -> None:
    encoded = codec.encode_command(c.Put("default", 1, 0, 60_000, b"hi", "", "rq"))
    assert encoded.hex() == "016f0b07730764656661756c746902690069c0a90762026869730073027271"


def _zero(hint: object) -> object:
    """The plainest value of a field's type: 0, "", False, (), None, or a dataclass of those."""
    zero = {int: 0, str: "", bytes: b"", bool: False}
    if hint in zero:
        return zero[hint]  # type: ignore[index]
    if dataclasses.is_dataclass(hint):
        return hint(*(_zero(h) for _, h, _ in codec._hints(hint)))  # type: ignore[operator]
    if type(None) in typing.get_args(hint):
        return None
    return ()


def test_every_reply_class_round_trips_with_zero_values() -> None:
    for reply_cls in r.Reply.__args__:  # type: ignore[attr-defined]
        reply = _zero(reply_cls)
        assert codec.decode_reply(codec.encode_reply(reply)) == reply  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x09o\x0b\x00", "unknown codec version"),
        (b"\x01o\x63\x00", "unknown class tag"),
        (b"\x01o\x0e\x02s\x01ab", "truncated"),
        (b"\x01o\x0e\x02s\x01as\x01a", "is not a <class 'int'>"),  # ReserveJob(job_id="a")
        (b"\x01o\x0e\x01s\x01a", "missing"),  # ReserveJob without its job id
        (b"\x01i\x02", "expected a command"),
        (b"\x01o\x05\x00\x00", "trailing bytes"),
        (b"\x01o\x16\x01i\x80\x80\x80\x80\x80\x80\x80\x80\x80\x04", "64 bits"),  # Peek(2**64)
        (b"\x01o\x16\x01i\x82\x00", "shortest form"),  # Peek(1), its varint one byte too long
    ],
)
def test_malformed_bytes_are_refused_with_a_codec_error_that_says_why(
    data: bytes, message: str
) -> None:
    with pytest.raises(codec.CodecError, match=message):
        codec.decode_command(data)


def test_a_field_of_the_wrong_class_inside_a_union_or_a_tuple_is_refused() -> None:
    # The encoder writes any tabled class; the decoder checks each field against its hint:
    # an Outcome's reply must be a reply (a union of classes), CheckClients' ids strings.
    not_a_reply = codec.encode_outcome(r.Outcome(reply=c.Tick(), wakeups=()))  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError, match=r"Outcome\.reply"):
        codec.decode_outcome(not_a_reply)
    not_strings = codec.encode_command(c.CheckClients("p", ("a", 5)))  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError, match=r"CheckClients\.client_ids"):
        codec.decode_command(not_strings)
    flag_for_int = codec.encode_command(c.Peek(True))
    with pytest.raises(codec.CodecError, match=r"Peek\.job_id"):
        codec.decode_command(flag_for_int)


def test_an_integer_beyond_64_bits_is_refused_when_encoding() -> None:
    with pytest.raises(codec.CodecError, match="64 bits"):
        codec.encode_command(c.Peek(2**64))


def test_a_uint64_job_id_round_trips_so_peek_of_the_largest_id_reaches_the_machine() -> None:
    # beanstalkd job ids are uint64: `peek 18446744073709551615` must reach the machine (and
    # count in cmd-peek) as itself, not be refused or clamped at the codec.
    largest = 2**64 - 1
    assert codec.decode_command(codec.encode_command(c.Peek(largest))) == c.Peek(largest)


def test_negative_ints_keep_their_int64_zigzag_bytes() -> None:
    # The uint64 widening must not change any existing encoding in the log.
    for value in (-1, -(2**63), 1, 2**63 - 1):
        encoded = codec.encode_command(c.Release("c", 1, 0, value))
        assert codec.decode_command(encoded) == c.Release("c", 1, 0, value)
    assert codec.encode_command(c.Release("c", 1, 0, -1))[-1] == 1


def _damage(encoded: bytes, data: st.DataObject, min_changes: int = 0) -> bytes:
    """``encoded`` with up to three bytes flipped, dropped or inserted, or cut short or
    lengthened at the end."""
    damaged = bytearray(encoded)
    for _ in range(data.draw(st.integers(min_value=min_changes, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(damaged)))
        action = data.draw(st.sampled_from(["flip", "drop", "insert", "cut", "append"]))
        if action == "cut":
            del damaged[at:]
        elif action == "append":
            damaged += data.draw(st.binary(min_size=1, max_size=3))
        elif action == "insert" or at == len(damaged):
            damaged.insert(at, data.draw(st.integers(min_value=0, max_value=255)))
        elif action == "drop":
            del damaged[at]
        else:
            damaged[at] = data.draw(st.integers(min_value=0, max_value=255))
    return bytes(damaged)


@settings(max_examples=500, deadline=None)
@given(_commands(), st.data())
def test_damaged_bytes_decode_to_a_valid_command_or_a_codec_error_never_anything_else(
    command: c.Command, data: st.DataObject
) -> None:
    """Whatever a peer sends: the decoder either refuses it with CodecError or returns a
    command the encoder accepts and that survives a round trip (nothing half-checked gets
    through). Bytes may differ only where an older encoding omits trailing default fields."""
    damaged = _damage(codec.encode_command(command), data, min_changes=1)
    try:
        decoded = codec.decode_command(damaged)
    except codec.CodecError:
        return
    assert codec.decode_command(codec.encode_command(decoded)) == decoded


# --- Flat values' own path: the same bytes and values as the generic code -------------------

anything = st.one_of(ints, st.booleans(), texts, st.binary(max_size=8), st.none())
_FLAT_CLASSES = sorted(
    {*codec._FLAT_COMMANDS.values(), *codec._FLAT_REPLIES.values()}, key=lambda cls: cls.__name__
)
_PLAIN = {
    codec._K_INT: ints,
    codec._K_STR: texts,
    codec._K_BYTES: st.binary(max_size=300),
    codec._K_BOOL: st.booleans(),
    codec._K_INT_OR_NONE: st.none() | ints,
}


@st.composite
def _flat_values(draw: st.DrawFn, plain: bool = True) -> object:
    """An instance of a flat class, its fields of their plain kinds or (``plain=False``) of
    any kind at all, as a caller that ignores the type hints might build it."""
    cls = draw(st.sampled_from(_FLAT_CLASSES))
    kinds = codec._flat(cls)[1]  # type: ignore[index]
    return cls(*(draw(_PLAIN[kind] if plain else anything) for kind in kinds))


def _as_sent(value: object) -> tuple[object, bytes | str]:
    """(what the cluster sends: a command, or a reply in an Outcome; its generic encoding)."""
    sent = value if type(value) in codec._FLAT_COMMANDS.values() else r.Outcome(value)  # type: ignore[arg-type]
    try:
        return sent, codec._encode_top(sent)
    except codec.CodecError as exc:
        return sent, str(exc)


def _result(function: object, value: object) -> tuple[str, object]:
    try:
        return ("value", function(value))  # type: ignore[operator]
    except codec.CodecError as exc:
        return ("refused", str(exc))


def test_the_flat_classes_are_the_commands_and_replies_of_the_busy_paths() -> None:
    names = {cls.__name__ for cls in _FLAT_CLASSES}
    assert {"Put", "Reserve", "Delete", "Release", "Touch", "Use", "Watch"} <= names
    assert {"Inserted", "Reserved", "Deleted", "Waiting", "TimedOut", "NotFound"} <= names
    assert not {"CheckClients", "TubeList", "Wakeup", "Outcome"} & names  # tuples, unions


@settings(max_examples=500, deadline=None)
@given(_flat_values() | _flat_values(plain=False))
def test_a_flat_value_is_encoded_to_the_generic_bytes_whatever_its_fields_hold(
    value: object,
) -> None:
    sent, generic = _as_sent(value)
    encode = codec.encode_command if sent is value else codec.encode_outcome
    assert _result(encode, sent) == (
        ("value", generic) if isinstance(generic, bytes) else ("refused", generic)
    )


def _agrees_with_the_generic_reader(decode: object, data: bytes) -> None:
    """``decode`` returns what the generic reader returns, or refuses with its reason (the
    generic reader may also return a value of another class, which ``decode`` refuses)."""
    kind, value = _result(decode, data)
    generic_kind, generic_value = _result(codec._decode_top, data)
    if kind == "value" or generic_kind == "refused":
        assert (kind, value) == (generic_kind, generic_value)


@settings(max_examples=1000, deadline=None)
@given(_flat_values(), st.data())
def test_a_flat_value_is_decoded_like_the_generic_reader_even_when_damaged(
    value: object, data: st.DataObject
) -> None:
    _, generic = _as_sent(value)
    assert isinstance(generic, bytes)
    for decode in (codec.decode_command, codec.decode_outcome):
        _agrees_with_the_generic_reader(decode, _damage(generic, data))


_PUT = codec.encode_command(c.Put("t", 1, 0, 1000, b"b", "c", "r"))
_RESERVE = codec.encode_command(c.Reserve("c", None, "r", False))
_INSERTED = codec.encode_outcome(r.Outcome(r.Inserted(5)))


@pytest.mark.parametrize(
    ("decode", "data", "message"),
    [
        (codec.decode_command, _PUT + b"\x00", "trailing bytes"),
        (codec.decode_command, _PUT[:-1], "truncated"),
        (codec.decode_command, _PUT[:5], "truncated"),
        (codec.decode_command, _PUT.replace(b"s\x01t", b"s\x01\xff"), "UTF-8"),
        (codec.decode_command, _PUT.replace(b"s\x01t", b"s\x81\x00t"), "shortest form"),
        (codec.decode_command, _PUT.replace(b"i\x02", b"i" + b"\x80" * 9 + b"\x04"), "64 bits"),
        (codec.decode_command, _PUT.replace(b"i\x02", b"T"), r"Put\.priority"),
        (codec.decode_command, _RESERVE[:-1] + b"\x00", "unknown value tag 0"),
        (codec.decode_command, _RESERVE[:-1] + b"\x00\x00", "unknown value tag 0"),
        (codec.decode_command, _PUT.replace(b"i\x02", b"N"), r"Put\.priority"),
        (codec.decode_command, _RESERVE.replace(b"N", b"T"), r"Reserve\.timeout_ms"),
        (codec.decode_command, _INSERTED, "expected a command"),
        (codec.decode_outcome, _INSERTED + b"\x00", "trailing bytes"),
        (codec.decode_outcome, _INSERTED[:-1], "truncated"),
        (
            codec.decode_outcome,
            _INSERTED.replace(b"i\x0a", b"i" + b"\x80" * 9 + b"\x04"),
            "64 bits",
        ),
        (codec.decode_outcome, _INSERTED.replace(b"\x41", b"\x16"), r"Outcome\.reply"),
    ],
)
def test_a_malformed_flat_value_is_refused_with_the_generic_reason(
    decode: object, data: bytes, message: str
) -> None:
    with pytest.raises(codec.CodecError, match=message):
        decode(data)  # type: ignore[operator]


def test_a_put_reserve_delete_and_their_outcomes_skip_the_generic_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Why the flat path exists: a put crosses the codec seven times in the cluster. The
    # interpreted source is patched: a native build calls its own functions directly.
    codec = native.load_source("statemachine.codec")
    commands = [
        c.Put("tube", 2**32 - 1, 0, 120_000, b"\r\n\x00body", "client-1", "client-1-7"),
        c.Reserve("client-1", None, "client-1-8", False),
        c.Reserve("client-1", 5_000, "client-1-9", True),
        c.Delete("client-1", 2**40),
    ]
    outcomes = [
        r.Outcome(r.Inserted(2**40)),
        r.Outcome(r.Reserved(7, b"body")),
        r.Outcome(r.Deleted()),
    ]
    encoded = [codec.encode_command(command) for command in commands]
    encoded_outcomes = [codec.encode_outcome(outcome) for outcome in outcomes]
    peek_bytes = codec.encode_command(c.CheckClients("p", ("a",)))

    def generic(*args: object) -> None:
        raise AssertionError("the generic codec ran")

    monkeypatch.setattr(codec, "_encode", generic)
    monkeypatch.setattr(codec, "_read", generic)
    assert [codec.encode_command(command) for command in commands] == encoded
    assert [codec.decode_command(data) for data in encoded] == commands
    assert [codec.encode_outcome(outcome) for outcome in outcomes] == encoded_outcomes
    assert [codec.decode_outcome(data) for data in encoded_outcomes] == outcomes
    with pytest.raises(AssertionError, match="generic"):  # anything else still goes there
        codec.decode_command(peek_bytes)
