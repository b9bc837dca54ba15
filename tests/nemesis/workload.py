"""Producers and consumers through the proxies, with unique bodies, and what each of them saw.

Each producer puts ``<name>-<n>`` and remembers every INSERTED (the body's job id and when);
a put that failed (INTERNAL_ERROR, a dropped connection) has an unknown outcome: it may or may
not be in the queue. Each consumer reserves with a timeout and deletes what it gets, and
remembers every reserve (when it started and ended, how it ended) and every DELETED. A socket
timeout past a reserve's timeout plus the liveness bound counts as a hang.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import greenstalk

TUBE = "nemesis"
TTR_S = 30
RESERVE_TIMEOUT_S = 3
# A reserve with a timeout is answered by its timeout plus this (proxy/session.py: the grace
# and the check): a longer one is a hang.
RESERVE_BOUND_S = 5.0
PUT_SOCKET_TIMEOUT_S = 30.0


@dataclass
class ReserveCall:
    consumer: str
    started: float
    ended: float
    timeout_s: float
    outcome: str  # "job", "timed_out", "hang" or an error


@dataclass
class History:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, int] = field(default_factory=dict)  # body -> job id
    ack_times: list[float] = field(default_factory=list)
    acked_at: dict[str, float] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # puts whose outcome never came back
    put_errors: list[str] = field(default_factory=list)
    deleted: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # id -> consumers
    deleted_bodies: list[str] = field(default_factory=list)
    delete_not_found: list[tuple[str, int, float]] = field(default_factory=list)
    delete_unknown: set[str] = field(default_factory=set)  # deletes whose reply never came
    reserves: list[ReserveCall] = field(default_factory=list)

    def put_ok(self, body: str, job_id: int) -> None:
        with self.lock:
            self.acked[body] = job_id
            now = time.monotonic()
            self.ack_times.append(now)
            self.acked_at[body] = now

    def put_unknown(self, body: str, error: str) -> None:
        with self.lock:
            self.unknown.add(body)
            self.put_errors.append(error)

    def deleted_by(self, consumer: str, job_id: int, body: str) -> None:
        with self.lock:
            self.deleted.setdefault(job_id, []).append((consumer, body))
            self.deleted_bodies.append(body)

    def reserve(self, call: ReserveCall) -> None:
        with self.lock:
            self.reserves.append(call)


def _connect(port: int, timeout_s: float) -> greenstalk.Client:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(timeout_s)
    return greenstalk.Client(sock, use=TUBE, watch=TUBE)


class Workload:
    # More consumers than producers: the queue stays short, so reserves wait and wake-ups (and
    # their streams) are exercised under every fault, and the final drain is quick.
    def __init__(self, ports: list[int], producers: int = 3, consumers: int = 6) -> None:
        self.history = History()
        self._ports = itertools.cycle(ports)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, args=(f"p{i}", next(self._ports)), daemon=True)
            for i in range(producers)
        ] + [
            threading.Thread(target=self._consume, args=(f"c{i}", next(self._ports)), daemon=True)
            for i in range(consumers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(PUT_SOCKET_TIMEOUT_S + 5)

    def _loop(self, port: int, timeout_s: float, step: Callable[[greenstalk.Client], None]) -> None:
        client: greenstalk.Client | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = _connect(port, timeout_s)
                step(client)
            except (OSError, greenstalk.Error):
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.2)
        if client is not None:
            client.close()

    def _produce(self, name: str, port: int) -> None:
        numbers = itertools.count()

        def put(client: greenstalk.Client) -> None:
            body = f"{name}-{next(numbers)}"
            try:
                job_id = client.put(body, ttr=TTR_S)
            except (OSError, greenstalk.Error) as exc:
                self.history.put_unknown(body, f"{type(exc).__name__}: {exc}")
                raise
            self.history.put_ok(body, job_id)

        self._loop(port, PUT_SOCKET_TIMEOUT_S, put)

    def _consume(self, name: str, port: int) -> None:
        limit = RESERVE_TIMEOUT_S + RESERVE_BOUND_S + 2.0

        def take(client: greenstalk.Client) -> None:
            started = time.monotonic()
            try:
                job = client.reserve(timeout=RESERVE_TIMEOUT_S)
            except greenstalk.TimedOutError:
                self._record(name, started, "timed_out")
                return
            except TimeoutError:
                self._record(name, started, "hang")
                raise
            except (OSError, greenstalk.Error) as exc:
                self._record(name, started, type(exc).__name__)
                raise
            self._record(name, started, "job")
            try:
                client.delete(job)
            except greenstalk.NotFoundError:
                with self.history.lock:
                    self.history.delete_not_found.append((name, job.id, time.monotonic()))
                return
            except (OSError, greenstalk.Error):
                with self.history.lock:  # it may have been applied: the job may be gone
                    self.history.delete_unknown.add(str(job.body))
                raise
            self.history.deleted_by(name, job.id, str(job.body))

        self._loop(port, limit, take)

    def _record(self, name: str, started: float, outcome: str) -> None:
        call = ReserveCall(name, started, time.monotonic(), RESERVE_TIMEOUT_S, outcome)
        self.history.reserve(call)


def drain(port: int, history: History, settle_s: float = TTR_S + 10, clients: int = 4) -> list[str]:
    """Take every job left in the tube with ``clients`` connections at once (waiting out
    reservations a lost session still holds, up to their TTR); return their bodies."""
    bodies: list[str] = []
    lock = threading.Lock()
    give_up = time.monotonic() + settle_s

    def take() -> None:
        client = _connect(port, 30)
        try:
            while True:
                try:
                    job = client.reserve(timeout=1)
                except greenstalk.TimedOutError:
                    stats = client.stats_tube(TUBE)
                    held = int(stats["current-jobs-reserved"]) + int(stats["current-jobs-delayed"])
                    if held == 0 or time.monotonic() > give_up:
                        return
                    continue
                with lock:
                    bodies.append(str(job.body))
                client.delete(job)
        finally:
            client.close()

    threads = [threading.Thread(target=take) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return bodies
