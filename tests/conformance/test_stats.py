"""``stats`` on a fresh server: all 51 keys, in beanstalkd's order, with the same counters.

Intended differences, and only these: the process keys describe the answering process
(``pid``, ``rusage-*``, ``uptime``, ``id``). ``version`` is "1.12" everywhere, as
beanstalkd's. ``hostname``, ``os`` and ``platform`` are this machine's on every target.
"""

from __future__ import annotations

import platform
import re

import pytest

from .targets import Server
from .wire import Client

EXPECTED_COUNTERS = {
    "current-jobs-urgent": "0",
    "current-jobs-ready": "0",
    "current-jobs-reserved": "2",
    "current-jobs-delayed": "1",
    "current-jobs-buried": "0",
    "cmd-put": "4",
    "cmd-peek": "1",
    "cmd-peek-ready": "1",
    "cmd-peek-delayed": "1",
    "cmd-peek-buried": "1",
    "cmd-reserve": "1",
    "cmd-reserve-with-timeout": "1",
    "cmd-delete": "1",
    "cmd-release": "0",
    "cmd-use": "1",
    "cmd-watch": "2",
    "cmd-ignore": "1",
    "cmd-bury": "0",
    "cmd-kick": "1",
    "cmd-touch": "1",
    "cmd-stats": "1",
    "cmd-stats-job": "1",
    "cmd-stats-tube": "1",
    "cmd-list-tubes": "1",
    "cmd-list-tube-used": "2",
    "cmd-list-tubes-watched": "1",
    "cmd-pause-tube": "1",
    "job-timeouts": "0",
    "total-jobs": "4",
    "max-job-size": "65535",
    "current-tubes": "3",
    "current-connections": "2",
    "current-producers": "1",
    "current-workers": "1",
    "current-waiting": "0",
    "total-connections": "3",
}

PROCESS_KEYS = [
    "pid",
    "version",
    "rusage-utime",
    "rusage-stime",
    "uptime",
    "binlog-oldest-index",
    "binlog-current-index",
    "binlog-records-migrated",
    "binlog-records-written",
    "binlog-max-size",
    "draining",
    "id",
    "hostname",
    "os",
    "platform",
]


def _workload(c: Client, other: Client) -> None:
    c.request(b"use t1\r\n", b"USING t1\r\n")
    c.request(b"put 5 0 60 1\r\na\r\n", b"INSERTED 1\r\n")
    c.request(b"put 5000 0 60 1\r\nb\r\n", b"INSERTED 2\r\n")
    c.request(b"put 0 100 60 1\r\nc\r\n", b"INSERTED 3\r\n")
    c.request(b"put 0 0 60 1\r\nd\r\n", b"INSERTED 4\r\n")
    c.request(b"delete 4\r\n", b"DELETED\r\n")
    c.request(b"watch t1\r\n", b"WATCHING 2\r\n")
    c.request(b"watch t2\r\n", b"WATCHING 3\r\n")
    c.request(b"ignore default\r\n", b"WATCHING 2\r\n")
    c.request(b"reserve\r\n", b"RESERVED 1 1\r\na\r\n")
    c.request(b"touch 1\r\n", b"TOUCHED\r\n")
    c.request(b"reserve-with-timeout 0\r\n", b"RESERVED 2 1\r\nb\r\n")
    c.request(b"peek 2\r\n", b"FOUND 2 1\r\nb\r\n")
    c.request(b"peek-ready\r\n", b"NOT_FOUND\r\n")
    c.request(b"peek-delayed\r\n", b"FOUND 3 1\r\nc\r\n")
    c.request(b"peek-buried\r\n", b"NOT_FOUND\r\n")
    c.request(b"kick 0\r\n", b"KICKED 0\r\n")
    c.yaml(b"stats-job 1\r\n")
    c.yaml(b"stats-tube t1\r\n")
    c.chunk(b"list-tubes\r\n")
    c.request(b"list-tube-used\r\n", b"USING t1\r\n")
    c.chunk(b"list-tubes-watched\r\n")
    c.request(b"pause-tube t2 0\r\n", b"PAUSED\r\n")
    other.send(b"quit\r\n")
    other.expect_closed()


@pytest.mark.fresh
def test_stats_after_a_workload_has_every_key_in_order_with_equal_counters(target: Server):
    with target.connect() as c, target.connect() as idle:
        other = target.connect()
        _workload(c, other)
        idle.request(b"list-tube-used\r\n", b"USING default\r\n")
        stats = c.yaml(b"stats\r\n")
    assert list(stats) == [*EXPECTED_COUNTERS, *PROCESS_KEYS]
    # The harness's readiness probe (if any) counts in total-connections.
    total = int(stats.pop("total-connections")) - target.probe_connections
    assert {k: stats[k] for k in EXPECTED_COUNTERS if k in stats} == {
        k: v for k, v in EXPECTED_COUNTERS.items() if k != "total-connections"
    }
    assert total == 3
    assert re.fullmatch(r"[1-9]\d*", stats["pid"])
    # beanstalkd's shape everywhere: clients (fivebeans) parse it as a version number.
    assert stats["version"] == '"1.12"'
    assert re.fullmatch(r'"\d+(\.\d+)+"', stats["version"])
    for key in ("rusage-utime", "rusage-stime"):
        assert re.fullmatch(r"\d+\.\d{6}", stats[key])
    assert stats["uptime"] in ("0", "1", "2", "3")
    binlog = [stats[k] for k in PROCESS_KEYS[5:10]]
    assert binlog == ["0", "0", "0", "0", "10485760"]
    assert stats["draining"] == "false"
    assert re.fullmatch(r"[0-9a-f]{16}", stats["id"])
    uname = platform.uname()
    assert (stats["hostname"], stats["os"], stats["platform"]) == (
        uname.node,
        uname.version,
        uname.machine,
    )


@pytest.mark.fresh
def test_stats_on_a_fresh_server_counts_only_itself(target: Server):
    with target.connect() as c:
        stats = c.yaml(b"stats\r\n")
    stats["total-connections"] = str(int(stats["total-connections"]) - target.probe_connections)
    zero = {k: v for k, v in EXPECTED_COUNTERS.items() if k not in ("max-job-size",)}
    ones = {"cmd-stats", "current-tubes", "current-connections", "total-connections"}
    assert {k: stats[k] for k in zero} == {k: ("1" if k in ones else "0") for k in zero}
