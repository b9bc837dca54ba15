"""Waiting on an observable condition instead of sleeping for a guessed time.

A fixed sleep is either too short on a loaded 2-core CI machine (a flaky failure) or longer
than needed everywhere else (a slow suite). Polling the condition itself with a short
interval returns as soon as it holds and fails with what was last seen when it never does.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.02


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = POLL_S
) -> T:
    """Call ``predicate`` until it returns something truthy and return that. On timeout raise
    AssertionError naming ``what`` and the last value (or exception) the predicate gave."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
        except AssertionError as exc:  # a predicate may assert; keep the message
            value, last = None, exc  # type: ignore[assignment]
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout_s, what, last))
        time.sleep(poll_s)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    what: str,
    poll_s: float = POLL_S,
) -> T:
    """:func:`wait_until` for a coroutine: ``predicate`` may be sync or async."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            value, last = None, exc
        else:
            if value:
                return value  # type: ignore[return-value]
            last = value
        if loop.time() >= deadline:
            raise AssertionError(_timed_out(timeout_s, what, last))
        await asyncio.sleep(poll_s)


def _timed_out(timeout_s: float, what: str, last: object) -> str:
    return f"timed out after {timeout_s} s waiting for {what} (last: {last!r})"
