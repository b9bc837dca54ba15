"""The one table of gRPC statuses: the node's own conditions and the machine's failure replies
get their documented status; anything unexpected is INTERNAL, never a caller's fault."""

from __future__ import annotations

import grpc
import pytest

from cluster import errors
from statemachine import codec
from statemachine import replies as r


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotLeader("1", "2", "127.0.0.1:7"), grpc.StatusCode.UNAVAILABLE),
        (errors.Ambiguous("may have been applied"), grpc.StatusCode.UNAVAILABLE),
        (errors.Refused("malformed"), grpc.StatusCode.INVALID_ARGUMENT),
        (codec.CodecError("truncated"), grpc.StatusCode.INVALID_ARGUMENT),
        (TimeoutError("no leader"), grpc.StatusCode.UNAVAILABLE),
        (ValueError("a bug deep in the node"), grpc.StatusCode.INTERNAL),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_gets_its_status_and_the_unexpected_are_internal(
    error: BaseException, code: grpc.StatusCode
) -> None:
    got, message = errors.status_for_error(error)
    assert got == code
    assert message


def test_failure_replies_say_what_was_wrong() -> None:
    assert errors.status_for_reply(r.Inserted(1)) is None
    code, message = errors.status_for_reply(r.InvalidArgument("priority too big"))  # type: ignore[misc]
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "priority too big")
    code, message = errors.status_for_reply(r.UnknownClient("c1"))  # type: ignore[misc]
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "c1" in message
