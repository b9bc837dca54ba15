"""Every error the cluster API can return, and the ONE table that maps it to a gRPC status.

Replies that are failures (``NotFound``, ``UnknownClient``, ...) are replicated outcomes; the
exceptions below are the node's own conditions (not the leader, no leader, an outcome it cannot
know). ``status_for`` turns either into (code, message); nothing known ever becomes UNKNOWN.

Retrying: UNAVAILABLE means "try again, maybe elsewhere". Its message says whether the command
was certainly not applied (safe to retry) or may have been (retry with the same request id,
which the cluster answers with the first outcome instead of applying it twice). A not-leader
error carries the leader's gRPC address in the trailing metadata key ``leader-grpc-addr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from jobqueue.errors import QueueError
from statemachine import codec
from statemachine import replies as r


class ClusterError(QueueError):
    """Base class of the node's own errors (``retryable`` and ``maybe_applied``: see
    ``jobqueue.errors``)."""


@dataclass
class NotLeader(ClusterError):
    """This node cannot propose: another node leads (or none is known yet)."""

    node_id: str
    leader_id: str = ""
    leader_grpc_addr: str = ""
    retryable = True  # at the leader, or here once one is elected

    def __str__(self) -> str:
        if self.leader_grpc_addr:
            return (
                f"node {self.node_id} is not the leader; the leader is node "
                f"{self.leader_id or '?'} at {self.leader_grpc_addr}: send the request there"
            )
        return f"node {self.node_id} knows no leader yet (election in progress): retry shortly"


class NotApplied(ClusterError):
    """The command was certainly not applied (queue full, entry discarded): safe to retry."""

    retryable = True


class Ambiguous(ClusterError):
    """The command may or may not have been applied: retry with the same request id."""

    retryable = True
    maybe_applied = True


class MembershipRefused(ClusterError):
    """A membership change was refused (another change pending, node already present, ...)."""


class Refused(ClusterError):
    """The command reached the machine but was malformed (the log refused to apply it)."""


_ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    NotLeader: grpc.StatusCode.UNAVAILABLE,
    NotApplied: grpc.StatusCode.UNAVAILABLE,
    Ambiguous: grpc.StatusCode.UNAVAILABLE,
    MembershipRefused: grpc.StatusCode.FAILED_PRECONDITION,
    Refused: grpc.StatusCode.INVALID_ARGUMENT,
    codec.CodecError: grpc.StatusCode.INVALID_ARGUMENT,
    TimeoutError: grpc.StatusCode.UNAVAILABLE,
}
# Anything else is unexpected, a bug: INTERNAL, never INVALID_ARGUMENT (a ValueError deep in
# the node says nothing about the caller's request).

# Failure replies of the state machine (coolbeans-compatible methods return these as statuses).
_REPLY_TABLE: dict[type, tuple[grpc.StatusCode, str]] = {
    r.NotFound: (grpc.StatusCode.NOT_FOUND, "no such job (or not reserved by this client)"),
    r.NotIgnored: (grpc.StatusCode.FAILED_PRECONDITION, "cannot ignore the only watched tube"),
    r.JobTooBig: (grpc.StatusCode.INVALID_ARGUMENT, "job body is larger than max-job-size"),
    r.UnknownClient: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "client is not connected (its proxy's lease may have run out): Connect it again",
    ),
    r.AlreadyWaiting: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "this client already has a reserve waiting",
    ),
    r.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
}


def status_for_error(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(error).__mro__:
        code = _ERROR_TABLE.get(cls)
        if code is not None:
            return code, str(error) or type(error).__name__
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}): {error}"


def status_for_reply(reply: r.Reply) -> tuple[grpc.StatusCode, str] | None:
    """The status for a failure reply, or None when ``reply`` is a success."""
    entry = _REPLY_TABLE.get(type(reply))
    if entry is None:
        return None
    code, message = entry
    if isinstance(reply, r.InvalidArgument):
        message = reply.message
    elif isinstance(reply, r.UnknownClient):
        message = f"client {reply.client_id!r}: {message}"
    return code, message


def leader_hint(error: BaseException) -> str:
    """The leader's gRPC address an error points the client to, or the empty string."""
    return error.leader_grpc_addr if isinstance(error, NotLeader) else ""
