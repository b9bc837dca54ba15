"""``beanraft node``: one cluster node (``cluster.cli_node``), and with ``--beanstalkd-listen``
the beanstalkd protocol served by the node itself (the direct path).

The listener is the proxy's own server and sessions (``proxy/``) over a ``NodeQueue``
(``cluster/node_queue.py``): on the leader a client's command goes straight to the proposer,
on a follower it is forwarded to the leader, with the proxy's leases, wake-ups and exactly-once
retries unchanged. It is wired here, in the composition root, because the cluster package must
not import the proxy.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import cli_node


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_node.add_arguments(parser)
    parser.add_argument(
        "--beanstalkd-listen",
        help="HOST:PORT where this node serves the beanstalkd protocol itself (default: off)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.beanstalkd_listen:
        return cli_node.run(args)
    from proxy.server import split_host_port

    if not args.beanstalkd_listen.startswith("unix:"):
        from cluster.server import AddressInUse, check_free

        try:
            split_host_port(args.beanstalkd_listen)
            check_free(args.beanstalkd_listen, "the beanstalkd protocol")
        except (ValueError, AddressInUse) as exc:
            raise SystemExit(f"beanraft node: --beanstalkd-listen: {exc}") from None
    return cli_node.run(args, [_listener(args.beanstalkd_listen, args.max_job_size)])


def _listener(listen: str, max_job_size: int) -> Callable[[Any], Awaitable[Any]]:
    """Start the listener in the background (its first lease waits for a leader, and a node
    must go on answering signals meanwhile); its stopper stops whatever has started."""

    async def start(server: Any) -> Callable[[], Awaitable[None]]:
        import asyncio

        import structlog

        from cluster.node_queue import NodeQueue
        from proxy.server import ProxyServer

        proxy = ProxyServer(NodeQueue(server.service), max_job_size=max_job_size)
        log = structlog.get_logger("beanraft.node")

        async def serve() -> None:
            # SIGUSR1 drains, as beanstalkd's and the proxy's: every put then gets DRAINING.
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, proxy.drain)
            bound = await proxy.start(listen)
            log.info("beanstalkd protocol served", address=bound, proxy_id=proxy.proxy_id)

        starting = asyncio.get_running_loop().create_task(serve())

        def failed(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                # Asked to serve and cannot (the address is taken): a node without its listener
                # would look healthy and answer nobody. Stop as a crash would; say why.
                log.critical(
                    "cannot serve the beanstalkd protocol: stopping",
                    address=listen,
                    error=str(task.exception()),
                )
                os._exit(2)

        starting.add_done_callback(failed)

        async def stop() -> None:
            if not starting.done():
                starting.cancel()
            await proxy.stop()

        return stop

    return start
