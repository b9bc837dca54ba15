"""Prometheus metrics of a worker pool, served on ``beanraft worker --metrics-addr`` (off by
default): attempts started, attempts finished by status, their duration, attempts running now,
and how long jobs waited in the queue before a slot took them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = Counter(
            "beanraft_worker_attempts_started_total", "Job attempts started", registry=self.registry
        )
        self.finished = Counter(
            "beanraft_worker_attempts_finished_total",
            "Job attempts finished, by status (exited, signaled, oom, timeout, stopped, ...)",
            ["status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "beanraft_worker_attempt_duration_seconds",
            "How long an attempt ran",
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.running = Gauge(
            "beanraft_worker_attempts_running", "Attempts running now", registry=self.registry
        )
        self.queue_wait = Histogram(
            "beanraft_worker_queue_wait_seconds",
            "A job's age when a slot took it (put to reserve, whole seconds as beanstalkd counts)",
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )

    def serve(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=self.registry)
