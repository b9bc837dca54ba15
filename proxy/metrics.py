"""Prometheus metrics of a beanstalkd front end (a proxy, or a node's own listener), served on
the proxy's ``--metrics-addr`` (off by default): connections now and in total, commands by
verb, each command's latency (its event read to its reply written), and replies that failed
because the cluster could not be reached."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "beanraft_proxy_open_connections", "Client connections open now", registry=self.registry
        )
        self.connections_total = Counter(
            "beanraft_proxy_connections_total",
            "Client connections accepted",
            registry=self.registry,
        )
        self.commands = Counter(
            "beanraft_proxy_commands_total",
            "Commands handled, by verb",
            ["verb"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "beanraft_proxy_command_latency_seconds",
            "From a command read to its reply written, by verb",
            ["verb"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "beanraft_proxy_cluster_unavailable_total",
            "Commands answered with an error because the cluster could not be reached",
            registry=self.registry,
        )

    def serve(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=self.registry)


def verb_of(event: object) -> str:
    """The command's name as a metric label: "Put" -> "put", "PeekReady" -> "peek_ready"."""
    name = type(event).__name__
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")
