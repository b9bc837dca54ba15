"""beanstalkd's limits as named constants, and the checks of values against them.

Theory of operation: beanstalkd's parser refuses out-of-range values with ``BAD_FORMAT`` (beanstalkd
1.12's protocol.txt and its source). The proxy parses the wire form, but the machine is also reached
through gRPC, so it checks every value again and answers ``InvalidArgument`` with a message that
says which value was wrong and what is allowed. A check returns the message, or None when the value
is fine; it never raises.

Units are milliseconds: the protocol's uint32 seconds become ``(2**32 - 1) * 1000`` ms.
"""

from __future__ import annotations

PRIORITY_MAX = 2**32 - 1
# beanstalkd counts a ready job as urgent when its priority is below this (stats key
# current-jobs-urgent).
URGENT_PRIORITY_LIMIT = 1024
# beanstalkd raises a TTR below one second to one second (protocol test ttr_small).
TTR_MIN_MS = 1000
# delay, ttr and pause-tube are uint32 seconds on the wire.
SECONDS_FIELD_MAX_MS = (2**32 - 1) * 1000
# reserve-with-timeout takes 0..INT_MAX seconds.
RESERVE_TIMEOUT_MAX_MS = (2**31 - 1) * 1000
# DEADLINE_SOON: the last second of a reserved job's TTR (SAFETY_MARGIN in conn.c).
DEADLINE_SOON_MARGIN_MS = 1000
TUBE_NAME_MAX_BYTES = 200
DEFAULT_TUBE = "default"
DEFAULT_MAX_JOB_SIZE = 65535
# beanstalkd's -z accepts at most 1 GiB.
MAX_JOB_SIZE_LIMIT = 1 << 30
# kick's bound is stored in 32 bits by beanstalkd.
KICK_BOUND_MAX = 2**32 - 1

TUBE_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"
)


def tube_name_error(name: str) -> str | None:
    """Why ``name`` is not a valid beanstalkd tube name, or None when it is."""
    size = len(name.encode())
    if not 1 <= size <= TUBE_NAME_MAX_BYTES:
        return f"tube name must be 1 to {TUBE_NAME_MAX_BYTES} bytes, got {size}"
    if not TUBE_NAME_CHARS.issuperset(name):
        return f"tube name {name!r} has a character outside A-Za-z0-9 and -+/;.$_()"
    if name.startswith("-"):
        return f"tube name {name!r} must not start with '-'"
    return None


def range_error(field: str, value: int, high: int) -> str | None:
    """Why ``value`` is outside ``0..high``, or None when it is inside."""
    if 0 <= value <= high:
        return None
    return f"{field} {value} outside 0..{high}"


def priority_error(priority: int) -> str | None:
    return range_error("priority", priority, PRIORITY_MAX)


def delay_error(delay_ms: int) -> str | None:
    return range_error("delay_ms", delay_ms, SECONDS_FIELD_MAX_MS)


def first_error(*errors: str | None) -> str | None:
    """The first of several check results that found something wrong."""
    for error in errors:
        if error is not None:
            return error
    return None
