"""The command/outcome codec: round trips, stability of the bytes, and refusal of bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_every_reply_class_round_trips_with_zero_values() -> None:
    for reply_cls in r.Reply.__args__:  # type: ignore[attr-defined]
        hints = codec._hints(reply_cls)
        zero = {int: 0, str: "", bytes: b""}
        values = [zero.get(h, ()) for _, h, _ in hints]
        reply = reply_cls(*values)
        assert codec.decode_reply(codec.encode_reply(reply)) == reply


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


@settings(max_examples=500, deadline=None)
@given(_commands(), st.data())
def test_damaged_bytes_decode_to_a_valid_command_or_a_codec_error_never_anything_else(
    command: c.Command, data: st.DataObject
) -> None:
    """Whatever a peer sends: the decoder either refuses it with CodecError or returns a
    command the encoder accepts and that survives a round trip (nothing half-checked gets
    through). Bytes may differ only where an older encoding omits trailing default fields."""
    encoded = bytearray(codec.encode_command(command))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(encoded)))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "insert" or at == len(encoded):
            encoded.insert(at, data.draw(st.integers(min_value=0, max_value=255)))
        elif action == "drop":
            del encoded[at]
        else:
            encoded[at] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = codec.decode_command(bytes(encoded))
    except codec.CodecError:
        return
    assert codec.decode_command(codec.encode_command(decoded)) == decoded


# --- The put's own path: the same bytes and values as the generic code ----------------------

anything = st.one_of(ints, st.booleans(), texts, st.binary(max_size=8), st.none())


def _result(function: object, value: object) -> tuple[str, object]:
    try:
        return ("value", function(value))  # type: ignore[operator]
    except codec.CodecError as exc:
        return ("refused", str(exc))


@settings(max_examples=300, deadline=None)
@given(
    st.builds(c.Put, texts, ints, ints, ints, st.binary(max_size=300), texts, texts)
    | st.builds(c.Put, anything, anything, anything, anything, anything, anything, anything)
)
def test_a_put_is_encoded_to_the_generic_bytes_whatever_its_fields_hold(put: c.Put) -> None:
    assert _result(codec.encode_command, put) == _result(codec._encode_top, put)


@settings(max_examples=300, deadline=None)
@given(anything | st.integers(min_value=2**64, max_value=2**70))
def test_an_inserted_outcome_is_encoded_to_the_generic_bytes(job_id: object) -> None:
    outcome = r.Outcome(r.Inserted(job_id))  # type: ignore[arg-type]
    assert _result(codec.encode_outcome, outcome) == _result(codec._encode_top, outcome)


def _damage(encoded: bytes, data: st.DataObject) -> bytes:
    damaged = bytearray(encoded)
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
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


def _agrees_with_the_generic_reader(decode: object, data: bytes) -> None:
    """``decode`` returns what the generic reader returns, or refuses with its reason (the
    generic reader may also return a value of another class, which ``decode`` refuses)."""
    kind, value = _result(decode, data)
    generic_kind, generic_value = _result(codec._decode_top, data)
    if kind == "value" or generic_kind == "refused":
        assert (kind, value) == (generic_kind, generic_value)


@settings(max_examples=500, deadline=None)
@given(st.builds(c.Put, texts, ints, ints, ints, st.binary(max_size=300), texts, texts), st.data())
def test_a_put_is_decoded_like_the_generic_reader_even_when_damaged(
    put: c.Put, data: st.DataObject
) -> None:
    _agrees_with_the_generic_reader(codec.decode_command, _damage(codec.encode_command(put), data))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.data())
def test_an_inserted_outcome_is_decoded_like_the_generic_reader_even_when_damaged(
    job_id: int, data: st.DataObject
) -> None:
    encoded = codec.encode_outcome(r.Outcome(r.Inserted(job_id)))
    _agrees_with_the_generic_reader(codec.decode_outcome, _damage(encoded, data))


_PUT = codec.encode_command(c.Put("t", 1, 0, 1000, b"b", "c", "r"))
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
        (codec.decode_outcome, _INSERTED + b"\x00", "trailing bytes"),
        (codec.decode_outcome, _INSERTED[:-1], "truncated"),
        (
            codec.decode_outcome,
            _INSERTED.replace(b"i\x0a", b"i" + b"\x80" * 9 + b"\x04"),
            "64 bits",
        ),
    ],
)
def test_a_malformed_put_or_inserted_outcome_is_refused_with_the_generic_reason(
    decode: object, data: bytes, message: str
) -> None:
    with pytest.raises(codec.CodecError, match=message):
        decode(data)  # type: ignore[operator]


def test_a_put_and_its_inserted_outcome_skip_the_generic_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Why the put's own path exists: a put crosses the codec seven times in the cluster.
    put = c.Put("tube", 2**32 - 1, 0, 120_000, b"\r\n\x00body", "client-1", "client-1-7")
    outcome = r.Outcome(r.Inserted(2**40))
    put_bytes, outcome_bytes = codec.encode_command(put), codec.encode_outcome(outcome)
    peek_bytes = codec.encode_command(c.Peek(1))

    def generic(*args: object) -> None:
        raise AssertionError("the generic codec ran")

    monkeypatch.setattr(codec, "_encode", generic)
    monkeypatch.setattr(codec, "_read", generic)
    assert codec.encode_command(put) == put_bytes
    assert codec.encode_outcome(outcome) == outcome_bytes
    assert codec.decode_command(put_bytes) == put
    assert codec.decode_outcome(outcome_bytes) == outcome
    with pytest.raises(AssertionError, match="generic"):  # anything else still goes there
        codec.decode_command(peek_bytes)
