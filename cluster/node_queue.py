"""``NodeQueue``: the ``JobQueue`` a beanstalkd front end runs against inside a node (the direct
path: ``beanraft node --beanstalkd-listen``), with no gRPC hop between them.

It applies commands through the node's own ``QueueService``: on the leader a command goes
straight to the proposer; on a follower the service forwards it to the leader. Wake-ups come
from the node's own wake-up hub (every replica numbers them the same). So the front end's
sessions, leases and exactly-once retries are the proxy's, unchanged: a command that meets an
election or a forward that broke is retried with the same request id, as ``RemoteQueue`` does.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from cluster.errors import ClusterError
from cluster.service import QueueService
from jobqueue.interface import QueueUnavailable, WakeupHandler, request_id_for
from statemachine import codec
from statemachine import commands as c
from statemachine.replies import Reply

log = structlog.get_logger(__name__)

RETRY_FOR_S = 20.0  # as RemoteQueue: an election takes well under this
RETRY_PAUSE_S = 0.05


class NodeQueue:
    def __init__(self, service: QueueService) -> None:
        self.service = service
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # looked up once (a getpid each)

    async def apply(self, command: c.Command) -> Reply:
        request_id = request_id_for(command)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        give_up = loop.time() + RETRY_FOR_S
        while True:
            try:
                reply, _ = await self.service.apply_reply(command, request_id)
                return reply
            except ClusterError as exc:
                # Retried with the same request id: an election, a broken forward, an outcome
                # not known (the error says; jobqueue.errors).
                if not exc.retryable:
                    raise QueueUnavailable(f"the cluster refused the command: {exc}") from None
                if loop.time() >= give_up:
                    raise QueueUnavailable(
                        f"no leader applied the command within {RETRY_FOR_S:.0f} s ({exc}); it "
                        "may or may not have been applied"
                    ) from None
            await asyncio.sleep(RETRY_PAUSE_S)

    def subscribe(self, proxy_id: str, handler: WakeupHandler) -> None:
        hub = self.service.node.hub

        async def follow() -> None:
            async for event in hub.stream(proxy_id, after_seq=0):
                if event.wakeup:
                    handler(codec.decode_wakeup(event.wakeup))

        self._tasks.append(asyncio.get_running_loop().create_task(follow()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
