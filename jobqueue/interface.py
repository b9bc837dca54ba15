"""The one interface every front end runs against: a job queue that applies commands.

Implemented by ``jobqueue.local.LocalQueue`` (the state machine in-process, for
``beanraft proxy --standalone`` and tests) and by ``api.client.RemoteQueue`` (a cluster over
gRPC). The beanstalkd proxy runs unchanged against either, as coolbeans' front end does against
its ``state.JSM`` interface.

Rule: wake-ups are delivered only through ``subscribe``, never in the reply of ``apply`` (the
reply's outcome may list them, but a front end must act on the subscription alone), so a
wake-up caused by another proxy's command and one caused by our own arrive the same way.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Protocol

from jobqueue.errors import QueueUnavailable
from statemachine.commands import Command
from statemachine.replies import Reply, Wakeup

__all__ = ["JobQueue", "QueueUnavailable", "WakeupHandler", "request_id_for"]

WakeupHandler = Callable[[Wakeup], None]


class JobQueue(Protocol):
    async def apply(self, command: Command) -> Reply:
        """Stamp the time, replicate (if replicated) and apply ``command``; return its reply.

        Raises QueueUnavailable when it cannot; never returns a half-applied state."""
        ...

    def subscribe(self, proxy_id: str, handler: WakeupHandler) -> None:
        """Call ``handler`` (on the event loop that called subscribe) with every wake-up for
        the clients of ``proxy_id``, in the order the machine produced them."""
        ...

    async def close(self) -> None: ...


def request_id_for(command: Command) -> str:
    """The idempotency key of one apply: the command's own request id when it has one (Put,
    Reserve, RunJob), so that a caller that retries after QueueUnavailable is deduplicated too;
    else a fresh one, kept across the queue's own retries of that apply: this process's random
    prefix and a counter (unique as a uuid4, without a getrandom call per command)."""
    own = getattr(command, "request_id", "")
    if own:
        return f"{type(command).__name__}:{own}"
    return f"{_PROCESS_PREFIX}-{next(_FRESH)}"


# Fresh request ids: 64 random bits per process (drawn when it imports this module), then a
# count. A forked child shares its parent's and would repeat its ids; none applies commands
# (the node's dump child, a worker's job processes).
_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_FRESH = itertools.count(1)
