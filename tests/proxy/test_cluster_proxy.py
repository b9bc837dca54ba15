"""The proxy in front of a real 3-node cluster: leases and failover, with greenstalk clients.

- A proxy killed with -9 cannot say goodbye: its clients' reserved jobs come back when its lease
  runs out (``--lease-ms``), and another proxy's client gets them.
- Killing the leader with -9 while clients put and reserve through the proxy loses no
  acknowledged put, applies none twice, and never lets two clients hold one job.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import greenstalk
import pytest
from harness import wait_until
from proxyproc import Cluster, start_cluster, wait_for_listener

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


def client(port: int, tube: str) -> greenstalk.Client:
    return greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube)


def test_jobs_of_a_killed_proxy_return_to_ready_when_its_lease_runs_out(cluster: Cluster):
    doomed = cluster.add_proxy("--lease-ms", "1500")
    survivor = cluster.add_proxy()
    with client(survivor.port, "lease") as other:
        job_id = other.put("held", ttr=600)
        holder = client(doomed.port, "lease")
        assert holder.reserve(timeout=10).id == job_id
        doomed.kill()
        started = time.monotonic()
        job = other.reserve(timeout=30)
        waited_s = time.monotonic() - started
        assert job.id == job_id
        assert waited_s < 20, "the job came back long after the 1.5 s lease (TTR is 600 s)"
        stats = other.stats_job(job)
        assert (stats["reserves"], stats["timeouts"]) == (2, 0)  # a release, not a timeout


class History:
    """What the clients saw: acknowledged puts, and who held which job when. The client
    threads record what breaks a rule in ``violations`` (an assert in a thread would only
    end that thread); the test asserts there are none."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: dict[str, int] = {}  # body -> id
        self.delivered: dict[int, str] = {}
        self.holders: dict[int, int] = {}
        self.errors: list[str] = []
        self.violations: list[str] = []

    def put(self, body: str, job_id: int) -> None:
        with self.lock:
            if body in self.acknowledged:
                self.violations.append(f"{body} acknowledged twice")
            self.acknowledged[body] = job_id

    def reserved(self, job_id: int, body: str, me: int) -> None:
        with self.lock:
            if job_id in self.holders:
                self.violations.append(f"job {job_id} held by {self.holders[job_id]} and {me}")
            self.holders[job_id] = me
            self.delivered[job_id] = body

    def released(self, job_id: int) -> None:
        with self.lock:
            self.holders.pop(job_id, None)


def _recording(history: History, work: Any) -> Any:
    """A thread body whose unexpected exception becomes a violation, not a lost thread."""

    def run(*args: Any) -> None:
        try:
            work(*args)
        except Exception as exc:  # any failure must reach the test
            with history.lock:
                history.violations.append(f"{work.__name__} failed: {exc!r}")

    return run


def _producer(port: int, me: int, history: History, stop: threading.Event) -> None:
    n = 0
    c = client(port, "failover")
    while not stop.is_set():
        body = f"p{me}-{n}"
        try:
            history.put(body, c.put(body, ttr=5))
            n += 1
        except (greenstalk.Error, OSError) as error:  # not acknowledged: may or may not exist
            history.errors.append(f"put {body}: {error!r}")
            c = client(port, "failover")
            n += 1


def _consumer(port: int, me: int, history: History, stop: threading.Event) -> None:
    c = client(port, "failover")
    while True:
        try:
            job = c.reserve(timeout=2)
        except greenstalk.TimedOutError:
            if stop.is_set():
                return
            continue
        except (greenstalk.Error, OSError) as error:
            history.errors.append(f"reserve: {error!r}")
            c = client(port, "failover")
            continue
        history.reserved(job.id, str(job.body), me)
        history.released(job.id)  # before the delete: a slow delete may let the TTR pass
        try:
            c.delete(job)
        except (greenstalk.Error, OSError) as error:
            history.errors.append(f"delete {job.id}: {error!r}")
            c = client(port, "failover")


def test_killing_the_leader_under_load_loses_no_acknowledged_put(cluster: Cluster):
    proxy = cluster.add_proxy()
    _failover_under_load(cluster, proxy.port)


def test_killing_the_leader_under_load_through_a_followers_own_listener_loses_nothing() -> None:
    """The direct path: clients on a follower's ``--beanstalkd-listen``; the leader dies."""
    cluster = start_cluster(listeners=True)
    try:
        follower = (cluster.leader_index() + 1) % 3
        port = cluster.listener_ports[follower]
        wait_for_listener(port, cluster.nodes[follower])
        _failover_under_load(cluster, port)
    finally:
        cluster.stop()


def _failover_under_load(cluster: Cluster, port: int) -> None:
    """4 producers and 4 consumers on ``port``; the leader is killed after 2 s; then every
    acknowledged put is delivered, none twice, and no job was held by two clients."""
    history = History()
    stop_producing, stop_consuming = threading.Event(), threading.Event()
    producers = [
        threading.Thread(
            target=_recording(history, _producer), args=(port, n, history, stop_producing)
        )
        for n in range(4)
    ]
    consumers = [
        threading.Thread(
            target=_recording(history, _consumer), args=(port, n, history, stop_consuming)
        )
        for n in range(4)
    ]
    for thread in producers + consumers:
        thread.start()
    wait_until(lambda: len(history.acknowledged) >= 20, 30, "the load under way before the kill")
    cluster.kill_node(cluster.leader_index())
    time.sleep(6)  # the scenario: the load runs on through the failover
    stop_producing.set()
    for thread in producers:
        thread.join(60)

    def undelivered() -> set[object]:
        with history.lock:
            return set(history.acknowledged.values()) - set(history.delivered)

    with contextlib.suppress(AssertionError):  # what is still missing is asserted below
        wait_until(lambda: not undelivered(), 60, "every acknowledged put delivered", 0.1)
    missing = undelivered()
    stop_consuming.set()
    for thread in consumers:
        thread.join(60)
    print(f"acknowledged {len(history.acknowledged)}, delivered {len(history.delivered)}, "
          f"client errors {len(history.errors)}: {history.errors[:3]}")  # fmt: skip
    assert not history.violations, history.violations[:5]
    assert len(history.acknowledged) > 50, history.errors[:5]
    assert not missing, f"acknowledged but never delivered: {sorted(missing)[:10]}"
    bodies = list(history.delivered.values())
    assert len(bodies) == len(set(bodies)), "a put was applied twice (one body, two ids)"


def test_a_cleanly_stopped_proxy_releases_its_clients_jobs_at_once(cluster: Cluster):
    leaving = cluster.add_proxy("--lease-ms", "60000")
    survivor = cluster.add_proxy()
    with client(survivor.port, "drop") as other:
        job_id = other.put("held", ttr=600)
        holder = client(leaving.port, "drop")
        assert holder.reserve(timeout=10).id == job_id
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(30) == 0
        started = time.monotonic()
        job = other.reserve(timeout=30)
        assert job.id == job_id
        assert time.monotonic() - started < 20, "released by DropProxy, not by the 60 s lease"


def test_a_blocked_reserve_is_answered_after_the_leader_is_killed(cluster: Cluster):
    proxy = cluster.add_proxy()
    result: list[greenstalk.Job] = []
    with client(proxy.port, "blocked") as worker, client(proxy.port, "blocked") as producer:
        waiting = threading.Thread(target=lambda: result.append(worker.reserve(timeout=60)))
        waiting.start()
        wait_until(
            lambda: producer.stats_tube("blocked")["current-waiting"] == 1,
            10,
            "the reserve blocked",
        )
        cluster.kill_node(cluster.leader_index())
        job_id = producer.put("after failover")
        waiting.join(60)
        assert [(job.id, job.body) for job in result] == [(job_id, "after failover")]
