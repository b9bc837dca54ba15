"""One error tree: every error our packages raise on purpose is a ``BeanraftError``, and the
queue family says whether a retry can succeed and whether the command may have been applied."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import grpc
import pytest

from api.apply_stream import CallFailed
from cluster.errors import Ambiguous, MembershipRefused, NotApplied, NotLeader, Refused
from cluster.forwarder import Forwarded
from jobqueue.errors import BeanraftError, QueueError, QueueUnavailable

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jobqueue", "api", "cluster", "proxy", "executor", "beanraft")
# Control flow private to one module, never seen by a caller.
PRIVATE = {"beanraft.up._Interrupted"}


def _error_classes() -> list[type[BaseException]]:
    found = []
    for package_name in PACKAGES:
        # The source directories themselves: under pytest a tests/ directory of the same name
        # can stand in for a package's __path__.
        for info in pkgutil.iter_modules([str(REPO / package_name)], f"{package_name}."):
            if info.name.endswith("__main__") or "_pb2" in info.name:
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == info.name:
                    found.append(cls)
    return found


def test_every_error_our_packages_define_is_a_beanraft_error() -> None:
    classes = _error_classes()
    assert len(classes) > 20, classes  # the walk found the packages' errors
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if not issubclass(cls, BeanraftError) and f"{cls.__module__}.{cls.__name__}" not in PRIVATE
    ]
    assert not strays, f"errors outside the BeanraftError tree: {strays}"


@pytest.mark.parametrize(
    ("error", "retryable", "maybe_applied"),
    [
        (QueueUnavailable("no node answered"), True, True),
        (NotLeader("2", "1", "127.0.0.1:7001"), True, False),
        (NotApplied("the leader's queue is full"), True, False),
        (Ambiguous("no outcome within 4 s"), True, True),
        (Refused("malformed"), False, False),
        (MembershipRefused("a change is pending"), False, False),
        (Forwarded(grpc.StatusCode.UNAVAILABLE, "the forward broke"), True, True),
        (Forwarded(grpc.StatusCode.INVALID_ARGUMENT, "bad tube name"), False, False),
        (CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time"), True, True),
        (CallFailed(grpc.StatusCode.PERMISSION_DENIED, "viewer may not Put"), False, False),
    ],
)
def test_a_queue_error_says_if_a_retry_can_succeed_and_if_it_may_have_been_applied(
    error: QueueError, retryable: bool, maybe_applied: bool
) -> None:
    assert isinstance(error, QueueError)
    assert (error.retryable, error.maybe_applied) == (retryable, maybe_applied)
