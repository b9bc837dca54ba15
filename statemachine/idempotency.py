"""The idempotency window: replies to put and reserve remembered by request id.

Theory of operation: a proxy that lost the answer to a put or reserve (its leader changed after
appending the entry) retries with the same request id. The first reply is remembered for
``IDEMPOTENCY_WINDOW_MS`` of machine time; the retry gets that reply and changes nothing (no
second job, no second reservation, no counters).

Entries are kept in application order, so their recording times never decrease and expired
entries are purged from the front (``purge``, called on every apply). An entry recorded at
``t`` answers while ``now < t + IDEMPOTENCY_WINDOW_MS``.
"""

from __future__ import annotations

from collections import OrderedDict

from statemachine.limits import IDEMPOTENCY_WINDOW_MS
from statemachine.replies import Reply


class IdempotencyWindow:
    """request id -> (recorded_ms, reply), oldest first."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[int, Reply]] = OrderedDict()

    def purge(self, now_ms: int) -> None:
        entries = self.entries
        while entries:
            recorded_ms = next(iter(entries.values()))[0]
            if recorded_ms + IDEMPOTENCY_WINDOW_MS > now_ms:
                return
            entries.popitem(last=False)

    def lookup(self, request_id: str) -> Reply | None:
        entry = self.entries.get(request_id)
        return None if entry is None else entry[1]

    def remember(self, request_id: str, now_ms: int, reply: Reply) -> None:
        self.entries[request_id] = (now_ms, reply)
