"""The ``coolbeans.api.v1.JobStateMachine`` servicer: coolbeans' methods mapped onto our
commands, plus beanraft's ``Apply`` and ``StreamWakeups``.

coolbeans' proxies never Connect a client; they send ``proxy_id`` and ``client_id`` on each
call. So every client-scoped call first applies ``Connect(client_id, proxy_id)`` (idempotent),
and a ``Reserve`` first makes the client's watch list equal to ``watched_tubes``. Times on this
wire are seconds (coolbeans' unit); inside they are milliseconds. Errors are gRPC statuses from
the one table in ``cluster.errors``, never UNKNOWN for a known case.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import structlog

from api import empty_pb2, job_pb2, jsm_pb2, jsm_pb2_grpc
from api.metadata import LEADER_HINT_KEY
from cluster import errors
from cluster.forwarder import Forwarded
from cluster.service import QueueService
from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r

log = structlog.get_logger(__name__)
T = TypeVar("T")
_WAIT_STATUS = {
    r.Reserved: jsm_pb2.Matched,
    r.TimedOut: jsm_pb2.Timeout,
    r.DeadlineSoon: jsm_pb2.DeadlineSoon,
    r.Waiting: jsm_pb2.Queued,
}


_NODE_ERRORS = (Forwarded, errors.ClusterError, codec.CodecError, TimeoutError)


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, message, leader hint) for one of ``_NODE_ERRORS``: a forwarded call's status
    passes through unchanged, the node's own errors go through the one table."""
    if isinstance(exc, Forwarded):
        return exc.code, exc.details, exc.leader_hint
    code, message = errors.status_for_error(exc)
    return code, message, errors.leader_hint(exc)


async def guarded(context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``; turn any error into the gRPC status from the one table."""
    try:
        return await work
    except _NODE_ERRORS as exc:
        code, message, hint = _status(exc)
        context.set_trailing_metadata(((LEADER_HINT_KEY, hint),) if hint else ())
        await context.abort(code, message)
    except Exception as exc:  # a bug: say so, and log where
        log.exception("unexpected error serving a call")
        code, message = errors.status_for_error(exc)
        await context.abort(code, f"{message}; this node logged the details")
    raise AssertionError("unreachable")  # abort raises


# A servicer method's context, typed by the method's request and response (the generated
# stubs say which), so a wrong field or a wrong answer type is a type error.
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
Ctx: TypeAlias = grpc.aio.ServicerContext[_Request, _Response]
# For helpers that serve several methods: the context of any of them.
AnyCtx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class JobStateMachineServicer(jsm_pb2_grpc.JobStateMachineServicer):
    def __init__(self, service: QueueService) -> None:
        self.service = service

    async def _reply(
        self, context: AnyCtx, commands: list[c.Command], request_id: str = ""
    ) -> r.Reply:
        """Apply commands in order; return the last reply, or abort on a failure reply."""
        reply: r.Reply = r.Ok()
        for i, command in enumerate(commands):
            rid = request_id if i == len(commands) - 1 else ""
            outcome, _ = await guarded(context, self.service.apply(command, rid))
            reply = outcome.reply
            status = errors.status_for_reply(reply)
            if status is not None and not isinstance(reply, r.NotIgnored):
                await context.abort(*status)
        return reply

    # --- beanraft extensions ------------------------------------------------------------

    async def Apply(
        self,
        request: jsm_pb2.ApplyRequest,
        context: Ctx[jsm_pb2.ApplyRequest, jsm_pb2.ApplyResponse],
    ) -> jsm_pb2.ApplyResponse:
        if request.batch:
            results = await guarded(context, self.service.apply_batch(list(request.batch)))
            self._hint_leader(context)
            return jsm_pb2.ApplyResponse(results=results)
        outcome, index = await guarded(
            context, self.service.apply_encoded(request.command, request.request_id)
        )
        self._hint_leader(context)
        return jsm_pb2.ApplyResponse(outcome=outcome, applied_index=index)

    # gRPC's aio server also takes a stream handler that writes with ``context.write`` and
    # returns None (the generated stubs only know the generator form): each answer goes out
    # the moment its call is done, without a queue and a task switch in between.
    async def ApplyStream(  # type: ignore[override]
        self,
        requests: AsyncIterator[jsm_pb2.ApplyStreamRequest],
        context: Ctx[jsm_pb2.ApplyStreamRequest, jsm_pb2.ApplyStreamResponse],
    ) -> None:
        """Apply's calls over one stream: each call runs as soon as it arrives (so calls
        that arrive together share a log entry) and is answered when done, in any order. A
        call's failure is its own answer; the stream ends when the caller closes its side and
        every call has been answered, or when the caller goes away."""
        calls: set[asyncio.Task[None]] = set()
        writing = asyncio.Lock()  # gRPC allows one write at a time on a stream

        async def answer(request: jsm_pb2.ApplyStreamRequest) -> None:
            response = await self._stream_call(request)
            async with writing:
                # The caller may be gone; its calls' outcomes stay in the request-id window.
                with contextlib.suppress(Exception):
                    await context.write(response)

        try:
            async for request in requests:
                task = asyncio.get_running_loop().create_task(answer(request))
                calls.add(task)
                task.add_done_callback(calls.discard)
            if calls:
                await asyncio.wait(set(calls))
        finally:
            for task in list(calls):
                task.cancel()

    async def _stream_call(
        self, request: jsm_pb2.ApplyStreamRequest
    ) -> jsm_pb2.ApplyStreamResponse:
        answer = jsm_pb2.ApplyStreamResponse(call_id=request.call_id)
        try:
            answer.results.extend(await self.service.apply_batch(list(request.batch)))
            answer.leader_hint = self._leader_hint()
        except _NODE_ERRORS as exc:
            code, answer.message, answer.leader_hint = _status(exc)
            answer.code = code.value[0]
        except Exception as exc:  # a bug: answer it rather than leave the caller waiting
            log.exception("apply stream call failed", call_id=request.call_id)
            answer.code = grpc.StatusCode.INTERNAL.value[0]
            answer.message = f"internal error ({type(exc).__name__}): {exc}"
        return answer

    def _leader_hint(self) -> str:
        """Where the client should go next: the leader, when this node forwarded the call."""
        if self.service.node.is_leader():
            return ""
        return self.service.node.leader_info()[1]

    def _hint_leader(self, context: AnyCtx) -> None:
        hint = self._leader_hint()
        if hint:
            context.set_trailing_metadata(((LEADER_HINT_KEY, hint),))

    async def StreamWakeups(
        self,
        request: jsm_pb2.WakeupStreamRequest,
        context: Ctx[jsm_pb2.WakeupStreamRequest, jsm_pb2.WakeupEvent],
    ) -> AsyncIterator[jsm_pb2.WakeupEvent]:
        if not request.proxy_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is required")
        node = self.service.node
        async for event in node.hub.stream(request.proxy_id, request.after_seq, request.exact):
            if not node.in_contact():
                # Cut off from the leader, this node applies nothing new: the wake-ups it could
                # send would come late or never. End the stream; the proxy resumes elsewhere.
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"node {node.config.node_id} lost contact with the leader: resume the "
                    "stream on another node",
                )
            yield jsm_pb2.WakeupEvent(
                seq=event.seq,
                wakeup=event.wakeup,
                gap=event.gap,
                applied_index=int(node.syncobj.raftLastApplied),
            )

    # --- coolbeans-compatible methods ---------------------------------------------------

    async def Put(
        self, request: jsm_pb2.PutRequest, context: Ctx[jsm_pb2.PutRequest, jsm_pb2.PutResponse]
    ) -> jsm_pb2.PutResponse:
        put = c.Put(
            tube=request.tube_name or "default",
            priority=request.priority,
            delay_ms=request.delay * 1000,
            ttr_ms=request.ttr * 1000,
            body=request.body,
            request_id=request.request_id,
        )
        reply = await self._reply(context, [put], request.request_id)
        assert isinstance(reply, r.Inserted), reply
        return jsm_pb2.PutResponse(job_id=reply.job_id)

    async def Reserve(
        self,
        request: jsm_pb2.ReserveRequest,
        context: Ctx[jsm_pb2.ReserveRequest, jsm_pb2.ReserveResponse],
    ) -> jsm_pb2.ReserveResponse:
        await _require_owner(request, context)
        current = await self._reply(
            context, [*_session(request), c.ListTubesWatched(request.client_id)]
        )
        assert isinstance(current, r.TubeList), current
        await self._reply(context, _watch_exactly(request, current.tubes))
        reserve = c.Reserve(
            client_id=request.client_id,
            timeout_ms=request.timeout_secs * 1000,
            request_id=request.request_id,
            with_timeout=True,
        )
        reply = await self._reply(context, [reserve])
        return jsm_pb2.ReserveResponse(reservation=_reservation(request, reply))

    async def StreamReserveUpdates(
        self,
        request: jsm_pb2.ReserveUpdateRequest,
        context: Ctx[jsm_pb2.ReserveUpdateRequest, jsm_pb2.ReserveResponse],
    ) -> AsyncIterator[jsm_pb2.ReserveResponse]:
        if not request.proxy_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is required")
        # Resumable by sequence number on any node (every replica numbers wake-ups the same),
        # so a stream that reattaches after a leader change loses nothing (coolbeans' 9.5).
        async for event in self.service.node.hub.stream(request.proxy_id, request.after_seq):
            if event.gap:
                await context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"wake-ups after {request.after_seq} are no longer held by this node: "
                    "recover waiting clients with CheckClientState",
                )
            if event.wakeup:
                wakeup = codec.decode_wakeup(event.wakeup)
                if isinstance(wakeup.result, r.StopRequested):
                    continue  # a worker's stop request: not a reservation of coolbeans' API
                reservation = _wakeup_reservation(wakeup)
                yield jsm_pb2.ReserveResponse(reservation=reservation, seq=event.seq)

    async def CheckClientState(
        self,
        request: jsm_pb2.CheckClientStateRequest,
        context: Ctx[jsm_pb2.CheckClientStateRequest, jsm_pb2.CheckClientStateResponse],
    ) -> jsm_pb2.CheckClientStateResponse:
        command = c.CheckClients(request.proxy_id, tuple(request.client_ids))
        reply = await self._reply(context, [command])
        assert isinstance(reply, r.ClientStates), reply
        return jsm_pb2.CheckClientStateResponse(
            proxy_id=request.proxy_id,
            waiting_client_ids=reply.waiting,
            not_waiting_client_ids=reply.not_waiting,
            missing_client_ids=reply.missing,
        )

    async def Delete(
        self, request: jsm_pb2.DeleteRequest, context: Ctx[jsm_pb2.DeleteRequest, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        return await self._owned(request, context, c.Delete(request.client_id, request.job_id))

    async def Release(
        self, request: jsm_pb2.ReleaseRequest, context: Ctx[jsm_pb2.ReleaseRequest, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        command = c.Release(
            request.client_id, request.job_id, request.priority, request.delay * 1000
        )
        return await self._owned(request, context, command)

    async def Touch(
        self, request: jsm_pb2.TouchRequest, context: Ctx[jsm_pb2.TouchRequest, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        return await self._owned(request, context, c.Touch(request.client_id, request.job_id))

    async def Bury(
        self, request: jsm_pb2.BuryRequest, context: Ctx[jsm_pb2.BuryRequest, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        command = c.Bury(request.client_id, request.job_id, request.priority)
        return await self._owned(request, context, command)

    async def _owned(
        self, request: _FromClient, context: AnyCtx, command: c.Command
    ) -> empty_pb2.Empty:
        await _require_owner(request, context)
        await self._reply(context, [*_session(request), command])
        return empty_pb2.Empty()

    async def Kick(
        self, request: jsm_pb2.KickRequest, context: Ctx[jsm_pb2.KickRequest, empty_pb2.Empty]
    ) -> empty_pb2.Empty:
        await self._reply(context, [c.KickJob(request.job_id)])
        return empty_pb2.Empty()

    async def KickN(
        self,
        request: jsm_pb2.KickNRequest,
        context: Ctx[jsm_pb2.KickNRequest, jsm_pb2.KickNResponse],
    ) -> jsm_pb2.KickNResponse:
        reply = await self._reply(context, [c.Kick(request.tube_name or "default", request.bound)])
        assert isinstance(reply, r.Kicked), reply
        return jsm_pb2.KickNResponse(jobs_kicked=reply.count)

    async def GetJob(
        self,
        request: jsm_pb2.GetJobRequest,
        context: Ctx[jsm_pb2.GetJobRequest, jsm_pb2.GetJobResponse],
    ) -> jsm_pb2.GetJobResponse:
        return jsm_pb2.GetJobResponse(job=await self._found(context, c.Peek(request.job_id)))

    async def PeekReady(
        self, request: jsm_pb2.PeekRequest, context: Ctx[jsm_pb2.PeekRequest, jsm_pb2.PeekResponse]
    ) -> jsm_pb2.PeekResponse:
        return jsm_pb2.PeekResponse(job=await self._found(context, c.PeekReady(request.tube_name)))

    async def PeekDelayed(
        self, request: jsm_pb2.PeekRequest, context: Ctx[jsm_pb2.PeekRequest, jsm_pb2.PeekResponse]
    ) -> jsm_pb2.PeekResponse:
        command = c.PeekDelayed(request.tube_name)
        return jsm_pb2.PeekResponse(job=await self._found(context, command))

    async def PeekBuried(
        self, request: jsm_pb2.PeekRequest, context: Ctx[jsm_pb2.PeekRequest, jsm_pb2.PeekResponse]
    ) -> jsm_pb2.PeekResponse:
        command = c.PeekBuried(request.tube_name)
        return jsm_pb2.PeekResponse(job=await self._found(context, command))

    async def _found(self, context: AnyCtx, command: c.Command) -> job_pb2.JobProto:
        """The job a peek found, with what coolbeans fills in: priority, delay, ttr, tube,
        state, creation time and the counters (from a stats-job read right after it, which
        no client's ``cmd-stats-job`` counts)."""
        reply = await self._reply(context, [command])
        assert isinstance(reply, r.Found), reply
        job = job_pb2.JobProto(id=reply.job_id, body=reply.body, body_size=len(reply.body))
        outcome, _ = await guarded(context, self.service.apply(c.StatsJob(reply.job_id, False)))
        stats = outcome.reply
        if isinstance(stats, r.JobStats):  # else deleted meanwhile: id and body are all there is
            job.priority = stats.priority
            job.delay = stats.delay_ms // 1000
            job.ttr = stats.ttr_ms // 1000
            job.tube_name = stats.tube
            job.state = _JOB_STATE.get(stats.state, job_pb2.INITIAL)
            job.created_at = int(time.time()) - stats.age_ms // 1000
            job.reserve_count = stats.reserves
            job.timeout_count = stats.timeouts
            job.release_count = stats.releases
            job.bury_count = stats.buries
            job.kick_count = stats.kicks
        return job

    async def GetStatsJobYaml(
        self,
        request: jsm_pb2.GetStatsJobYamlRequest,
        context: Ctx[jsm_pb2.GetStatsJobYamlRequest, jsm_pb2.GetStatsJobYamlResponse],
    ) -> jsm_pb2.GetStatsJobYamlResponse:
        reply = await self._reply(context, [c.StatsJob(request.job_id)])
        assert isinstance(reply, r.JobStats), reply
        return jsm_pb2.GetStatsJobYamlResponse(stats_yaml=_job_yaml(reply))

    async def GetStatsTubeYaml(
        self,
        request: jsm_pb2.GetStatsTubeYamlRequest,
        context: Ctx[jsm_pb2.GetStatsTubeYamlRequest, jsm_pb2.GetStatsTubeYamlResponse],
    ) -> jsm_pb2.GetStatsTubeYamlResponse:
        reply = await self._reply(context, [c.StatsTube(request.tube_name)])
        return jsm_pb2.GetStatsTubeYamlResponse(stats_yaml=_yaml(reply))

    async def GetStatsYaml(
        self, request: empty_pb2.Empty, context: Ctx[empty_pb2.Empty, jsm_pb2.GetStatsYamlResponse]
    ) -> jsm_pb2.GetStatsYamlResponse:
        reply = await self._reply(context, [c.Stats()])
        return jsm_pb2.GetStatsYamlResponse(stats_yaml=_yaml(reply))

    async def ListTubes(
        self, request: empty_pb2.Empty, context: Ctx[empty_pb2.Empty, jsm_pb2.ListTubesResponse]
    ) -> jsm_pb2.ListTubesResponse:
        reply = await self._reply(context, [c.ListTubes()])
        assert isinstance(reply, r.TubeList), reply
        return jsm_pb2.ListTubesResponse(tubes=reply.tubes)


class _FromClient(Protocol):
    """A request made for one client of one proxy (Delete, Release, Touch, Bury, Reserve)."""

    @property
    def proxy_id(self) -> str: ...
    @property
    def client_id(self) -> str: ...


class _Watching(_FromClient, Protocol):
    @property
    def watched_tubes(self) -> Sequence[str]: ...


class _Reserving(_FromClient, Protocol):
    @property
    def request_id(self) -> str: ...


async def _require_owner(request: _FromClient, context: AnyCtx) -> None:
    if not request.proxy_id or not request.client_id:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "proxy_id and client_id are both required for this call",
        )


def _session(request: _FromClient) -> list[c.Command]:
    return [c.Connect(request.client_id, request.proxy_id)]


def _watch_exactly(request: _Watching, current: tuple[str, ...]) -> list[c.Command]:
    """Commands that turn the client's watch list ``current`` into ``watched_tubes``: watch
    the new tubes first, then ignore the others (so the list is never empty)."""
    wanted = list(dict.fromkeys(request.watched_tubes)) or ["default"]
    commands: list[c.Command] = [c.Watch(request.client_id, t) for t in wanted if t not in current]
    commands += [c.Ignore(request.client_id, t) for t in current if t not in wanted]
    return commands


def _reservation(request: _Reserving, reply: r.Reply) -> jsm_pb2.Reservation:
    status = _WAIT_STATUS.get(type(reply), jsm_pb2.Error)
    reservation = jsm_pb2.Reservation(
        request_id=request.request_id,
        client_id=request.client_id,
        proxy_id=request.proxy_id,
        Status=status,
    )
    if isinstance(reply, r.Reserved):
        reservation.job_id = reply.job_id
        reservation.body = reply.body
        reservation.body_size = len(reply.body)
    elif status == jsm_pb2.Error:
        reservation.error_msg = f"unexpected reply {type(reply).__name__}"
    return reservation


def _wakeup_reservation(wakeup: r.Wakeup) -> jsm_pb2.Reservation:
    reservation = jsm_pb2.Reservation(
        request_id=wakeup.request_id,
        client_id=wakeup.client_id,
        proxy_id=wakeup.proxy_id,
        Status=_WAIT_STATUS[type(wakeup.result)],
    )
    if isinstance(wakeup.result, r.Reserved):
        reservation.job_id = wakeup.result.job_id
        reservation.body = wakeup.result.body
        reservation.body_size = len(wakeup.result.body)
    return reservation


_JOB_STATE = {
    "ready": job_pb2.READY,
    "reserved": job_pb2.RESERVED,
    "buried": job_pb2.BURIED,
    "delayed": job_pb2.DELAYED,
}


def _job_yaml(stats: r.JobStats) -> bytes:
    """stats-job as beanstalkd and coolbeans name its keys (id, pri, file), in beanstalkd's
    order, without the leading ``---``."""
    pairs = (
        ("id", stats.job_id),
        ("tube", stats.tube),
        ("state", stats.state),
        ("pri", stats.priority),
        ("age", stats.age_ms // 1000),
        ("delay", stats.delay_ms // 1000),
        ("ttr", stats.ttr_ms // 1000),
        ("time-left", stats.time_left_ms // 1000),
        ("file", 0),
        ("reserves", stats.reserves),
        ("timeouts", stats.timeouts),
        ("releases", stats.releases),
        ("buries", stats.buries),
        ("kicks", stats.kicks),
    )
    return "".join(f"{key}: {value}\n" for key, value in pairs).encode()


def _yaml(reply: r.Reply) -> bytes:
    """A YAML mapping without the leading ``---`` (the proxy adds it, as coolbeans' proxy does)."""
    lines = []
    for name in getattr(reply, "__dataclass_fields__", {}):
        value = getattr(reply, name)
        key = name.replace("_", "-")
        if key.endswith("-ms"):  # seconds on the wire, as beanstalkd prints them
            key, value = key[:-3], value // 1000
        lines.append(f"{key}: {value}")
    return ("\n".join(lines) + "\n").encode()
