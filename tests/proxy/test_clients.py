"""A real beanstalkd client (greenstalk) against a real standalone proxy process, and against a
node that serves the protocol itself (``--beanstalkd-listen``, the direct path).

Many producers and consumers on many connections: every job is delivered, none is held by two
clients at once; closing a connection releases its jobs at once; a waiting reserve is answered
when a job arrives; bodies are binary-safe; bad input, slow readers and thousands of idle
connections do not hurt anyone else.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator

import greenstalk
import pytest
from harness import wait_until
from proxyproc import Proxy, start_cluster, start_proxy, stop, wait_for_listener


@pytest.fixture(scope="module", params=["standalone", "node"])
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    if request.param == "standalone":
        server = start_proxy(["--standalone"])
        try:
            yield server
        finally:
            stop(server.process)
        return
    cluster = start_cluster(listeners=True)
    try:
        port = cluster.listener_ports[0]
        wait_for_listener(port, cluster.nodes[0])
        yield Proxy(port, cluster.nodes[0], cluster.root / "n1.log")
    finally:
        cluster.stop()


def client(proxy: Proxy, tube: str, encoding: str | None = "utf-8") -> greenstalk.Client:
    return greenstalk.Client(("127.0.0.1", proxy.port), encoding=encoding, use=tube, watch=tube)


def test_many_producers_and_consumers_deliver_every_job_exactly_once(proxy: Proxy):
    # BEANRAFT_PROXY_SOAK_JOBS=5000 makes this a soak test (jobs per producer).
    producers, consumers = 8, 8
    per_producer = int(os.environ.get("BEANRAFT_PROXY_SOAK_JOBS", "60"))
    expected = {f"p{p}-{i}" for p in range(producers) for i in range(per_producer)}
    delivered: list[str] = []
    holders: dict[int, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    producing = threading.Event()

    def produce(p: int) -> None:
        with client(proxy, "many") as c:
            for i in range(per_producer):
                c.put(f"p{p}-{i}")

    def consume(me: int) -> None:
        with client(proxy, "many") as c:
            while True:
                try:
                    job = c.reserve(timeout=1)
                except greenstalk.TimedOutError:
                    if not producing.is_set():
                        return
                    continue
                with lock:
                    # A job is held by at most one client at a time.
                    assert job.id not in holders, f"job {job.id} held by {holders[job.id]}"
                    holders[job.id] = me
                    delivered.append(str(job.body))
                with lock:
                    del holders[job.id]
                c.delete(job)

    def guarded(fn, *args):  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    producing.set()
    threads = [threading.Thread(target=guarded, args=(consume, n)) for n in range(consumers)]
    producer_threads = [
        threading.Thread(target=guarded, args=(produce, n)) for n in range(producers)
    ]
    for t in threads + producer_threads:
        t.start()
    for t in producer_threads:
        t.join(120)
    producing.clear()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(delivered) == sorted(expected)


def test_closing_a_connection_releases_its_jobs_at_once(proxy: Proxy):
    with client(proxy, "close") as producer:
        job_id = producer.put("held")
        holder = client(proxy, "close")
        assert holder.reserve(timeout=5).id == job_id
        holder.close()
        started = time.monotonic()
        job = producer.reserve(timeout=5)
        assert job.id == job_id
        assert time.monotonic() - started < 2  # at once, not after the TTR of 120 s
        stats = producer.stats_job(job)
        assert (stats["reserves"], stats["timeouts"]) == (2, 0)
        producer.delete(job)


def test_waiting_reserve_is_answered_when_a_job_is_put(proxy: Proxy):
    result: list[object] = []
    with client(proxy, "wait") as worker, client(proxy, "wait") as producer:

        def wait() -> None:
            result.append(worker.reserve(timeout=20))

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: producer.stats_tube("wait")["current-waiting"] == 1, 10, "a waiter")
        assert not result
        job_id = producer.put("wake")
        thread.join(20)
        assert [(j.id, j.body) for j in result] == [(job_id, "wake")]  # type: ignore[attr-defined]


def test_binary_bodies_round_trip(proxy: Proxy):
    rng = random.Random(4)
    bodies = [b"", b"\r\n", b"\x00" * 10, b"a\r\nb\r\n\r\n"]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000))) for _ in range(20)]
    with client(proxy, "binary", encoding=None) as c:
        for body in bodies:
            c.put(body)
        for body in bodies:
            job = c.reserve(timeout=5)
            assert job.body == body
            c.delete(job)


def _garbage_line(rng: random.Random) -> bytes:
    choices = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))),
        lambda: (
            rng.choice([b"put ", b"peek ", b"kick ", b"use ", b"release ", b"pause-tube"])
            + bytes(rng.choice(b"0123456789 -+xz\x00\t") for _ in range(rng.randrange(0, 40)))
        ),
        lambda: b"put 0 0 1 %d" % rng.randrange(0, 70000),
    ]
    line = rng.choice(choices)()
    return line.replace(b"quit", b"qu1t") + b"\r\n"


def test_random_garbage_never_crashes_the_proxy_and_others_keep_working(proxy: Proxy):
    rng = random.Random(1234)
    with client(proxy, "bystander") as bystander:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(b"".join(_garbage_line(rng) for _ in range(50)))
            # Finish any put body the garbage started, then prove the connection still works.
            sock.sendall(b"\r\n" * 40 + b"x" * 70_002 + b"\r\nlist-tube-used\r\n")
            received = b""
            while b"USING " not in received:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {received[-200:]!r}"
                received += chunk
            sock.close()
            job_id = bystander.put("still here")
            assert bystander.reserve(timeout=5).id == job_id
            bystander.delete(job_id)
    assert proxy.process.poll() is None


def test_a_client_that_does_not_read_never_stalls_the_others(proxy: Proxy):
    body = "y" * 60_000
    with client(proxy, "slow") as setup:
        job_id = setup.put(body)
    slow = socket.create_connection(("127.0.0.1", proxy.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # Ask for ~60 MB of replies and read none of them.
        slow.sendall(b"peek %d\r\n" % job_id * 1000)
        time.sleep(0.5)  # the scenario: the proxy has filled that client's buffers by now
        with client(proxy, "fast") as fast:
            started = time.monotonic()
            for _ in range(50):
                fast.put("z")
                fast.delete(fast.reserve(timeout=5))
            assert time.monotonic() - started < 30
    finally:
        slow.close()


def test_thousands_of_idle_connections_are_served(proxy: Proxy):
    count = int(os.environ.get("BEANRAFT_IDLE_CONNECTIONS", "2000"))
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=30))
        with client(proxy, "idle") as c:
            assert c.stats()["current-connections"] >= count + 1
            c.put("busy")
            c.delete(c.reserve(timeout=5))
        for sock in sockets[:: max(1, count // 50)]:
            sock.sendall(b"list-tube-used\r\n")
            assert sock.recv(100) == b"USING default\r\n"
    finally:
        for sock in sockets:
            sock.close()


def test_the_proxy_exports_prometheus_metrics_by_verb() -> None:
    import urllib.request

    from proxyproc import free_port

    port = free_port()  # the metrics server binds it; the proxy's own port it picks itself
    metered = start_proxy(["--standalone"], ["--metrics-addr", f"127.0.0.1:{port}"])
    try:
        with greenstalk.Client(("127.0.0.1", metered.port), use="metrics") as c:
            c.put("a")
            c.put("b")
            c.stats()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'beanraft_proxy_commands_total{verb="put"} 2.0' in text
        assert 'beanraft_proxy_command_latency_seconds_count{verb="put"} 2.0' in text
        assert "beanraft_proxy_connections_total 1.0" in text
    finally:
        stop(metered.process)
