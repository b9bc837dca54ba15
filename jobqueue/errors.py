"""The root of beanraft's errors, and the queue family every caller of a ``JobQueue`` handles.

Every error beanraft raises on purpose derives from ``BeanraftError`` (as dramatiq's do from
``DramatiqError``), so a caller can tell ours from a bug. The one exception is the pure state
machine (``statemachine``: ``CodecError``, ``SnapshotError``), which imports nothing of ours
and keeps plain ``ValueError`` subclasses.

A ``QueueError`` says what a caller needs to act, as two attributes:

- ``retryable``: trying the same command again (with the same request id) can succeed;
- ``maybe_applied``: the command may have been applied already, so a retry must carry the
  same request id (the cluster then answers with the first outcome instead of applying it
  again), and giving up means "outcome unknown", never "not done".

| error | retryable | maybe applied |
|---|---|---|
| ``QueueUnavailable`` (no node applied it in time) | yes | yes |
| ``cluster.errors.NotLeader`` (ask the leader) | yes | no |
| ``cluster.errors.NotApplied`` (certainly not applied) | yes | no |
| ``cluster.errors.Ambiguous`` (outcome unknown) | yes | yes |
| ``cluster.errors.Refused``, ``MembershipRefused`` | no | no |
| ``Forwarded``, ``CallFailed``: UNAVAILABLE, DEADLINE_EXCEEDED | yes | yes |
| ``Forwarded``, ``CallFailed``: any other gRPC status | no | no |
"""

from __future__ import annotations


class BeanraftError(Exception):
    """Base class of every error beanraft raises on purpose."""


class QueueError(BeanraftError):
    """A command could not be applied now; the attributes say what to do about it."""

    retryable = False  # a class's fixed answer, or each error's own (set by its __init__)
    maybe_applied = False


class QueueUnavailable(QueueError):
    """The queue could not apply a command now (no leader, no node reachable). The command
    may or may not have been applied; retry with the same request id."""

    retryable = True
    maybe_applied = True
