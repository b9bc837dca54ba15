"""The gRPC API of real node processes: coolbeans-compatible calls, errors, and follower writes.

One three-node cluster serves the module; every test ends with equal snapshots everywhere.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_harness import free_ports
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import async_wait_until
from process_harness import Node, ProcessCluster

from api import cluster_pb2, cluster_pb2_grpc, empty_pb2, job_pb2, jsm_pb2, jsm_pb2_grpc
from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path_factory.mktemp("grpc-api"))
    (metrics_port,) = free_ports(1)
    cluster.nodes[0].extra = ["--metrics-addr", f"127.0.0.1:{metrics_port}"]
    cluster.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    cluster.start_all()
    try:
        asyncio.run(cluster.wait_for_leader())
        yield cluster
    finally:
        cluster.stop_all()


async def _with(scraped: Awaitable[str], needle: str) -> str | None:
    body = await scraped
    return body if needle in body else None


async def _follower(cluster: ProcessCluster) -> Node:
    leader = await cluster.wait_for_leader()
    return next(n for n in cluster.nodes if n is not leader)


async def test_a_follower_accepts_a_write_and_forwards_it_to_the_leader(
    cluster: ProcessCluster,
) -> None:
    follower = await _follower(cluster)
    async with cluster.channel(follower) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        command = codec.encode_command(c.Put("forwarded", 1, 0, 60_000, b"via follower"))
        call = stub.Apply(jsm_pb2.ApplyRequest(command=command, request_id="f-1"))
        response = await call
        reply = codec.decode_outcome(response.outcome).reply
        assert isinstance(reply, r.Inserted)
        hint = dict(await call.trailing_metadata())["leader-grpc-addr"]
        assert hint == (await cluster.wait_for_leader()).grpc_addr
        peek = await stub.Apply(
            jsm_pb2.ApplyRequest(command=codec.encode_command(c.Peek(reply.job_id)))
        )
        assert codec.decode_outcome(peek.outcome).reply == r.Found(reply.job_id, b"via follower")
    await cluster.assert_converged()


async def test_coolbeans_calls_put_reserve_and_delete_without_a_connect(
    cluster: ProcessCluster,
) -> None:
    follower = await _follower(cluster)
    async with cluster.channel(follower) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        put = await stub.Put(
            jsm_pb2.PutRequest(priority=5, ttr=30, tube_name="cb", body=b"hi", body_size=2)
        )
        reserve = await stub.Reserve(
            jsm_pb2.ReserveRequest(
                client_id="conn-1",
                request_id="req-1",
                timeout_secs=0,
                watched_tubes=["cb"],
                proxy_id="proxy-cb",
            )
        )
        resv = reserve.reservation
        assert (resv.Status, resv.job_id, resv.body) == (jsm_pb2.Matched, put.job_id, b"hi")
        assert (resv.client_id, resv.proxy_id, resv.request_id) == (
            "conn-1",
            "proxy-cb",
            "req-1",
        )
        job = await stub.GetJob(jsm_pb2.GetJobRequest(job_id=put.job_id))
        assert (job.job.id, job.job.body_size) == (put.job_id, 2)
        # As coolbeans fills a JobProto: priority, ttr, tube, state, counters.
        got = job.job
        assert (got.priority, got.ttr, got.tube_name) == (5, 30, "cb")
        assert (got.state, got.reserve_count) == (job_pb2.RESERVED, 1)
        assert got.created_at > 0
        yaml = await stub.GetStatsJobYaml(jsm_pb2.GetStatsJobYamlRequest(job_id=put.job_id))
        keys = [line.split(":")[0] for line in yaml.stats_yaml.decode().splitlines()]
        assert keys == [
            "id", "tube", "state", "pri", "age", "delay", "ttr", "time-left", "file",
            "reserves", "timeouts", "releases", "buries", "kicks",
        ]  # fmt: skip
        await stub.Delete(
            jsm_pb2.DeleteRequest(job_id=put.job_id, proxy_id="proxy-cb", client_id="conn-1")
        )
        # A later reserve watching only "cb2" must not see "cb" (watched by the first).
        await stub.Put(jsm_pb2.PutRequest(ttr=30, tube_name="cb", body=b"old", body_size=3))
        newer = await stub.Put(jsm_pb2.PutRequest(ttr=30, tube_name="cb2", body=b"new"))
        second = await stub.Reserve(
            jsm_pb2.ReserveRequest(
                client_id="conn-1",
                request_id="req-2",
                timeout_secs=0,
                watched_tubes=["cb2"],
                proxy_id="proxy-cb",
            )
        )
        assert second.reservation.job_id == newer.job_id
        tubes = await stub.ListTubes(empty_pb2.Empty())
        assert "default" in tubes.tubes
        stats = await stub.GetStatsYaml(empty_pb2.Empty())
        assert b"cmd-delete: " in stats.stats_yaml
    await cluster.assert_converged()


@pytest.mark.parametrize(
    ("call", "request_message", "code", "fragment"),
    [
        ("Delete", jsm_pb2.DeleteRequest(job_id=999_999, proxy_id="p", client_id="c"),
         grpc.StatusCode.NOT_FOUND, "no such job"),
        ("Delete", jsm_pb2.DeleteRequest(job_id=1), grpc.StatusCode.INVALID_ARGUMENT,
         "proxy_id and client_id"),
        ("GetJob", jsm_pb2.GetJobRequest(job_id=999_999), grpc.StatusCode.NOT_FOUND, "no such"),
        ("Put", jsm_pb2.PutRequest(tube_name="-bad", ttr=1), grpc.StatusCode.INVALID_ARGUMENT,
         "tube"),
        ("Apply", jsm_pb2.ApplyRequest(command=b"\x01junk"), grpc.StatusCode.INVALID_ARGUMENT,
         "unknown value tag"),
        ("PeekReady", jsm_pb2.PeekRequest(tube_name="nothing-here"), grpc.StatusCode.NOT_FOUND,
         "no such"),
    ],
)  # fmt: skip
async def test_bad_requests_get_a_precise_status_with_a_message_never_unknown(
    cluster: ProcessCluster,
    call: str,
    request_message: object,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    async with cluster.channel(cluster.nodes[0]) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await getattr(stub, call)(request_message, timeout=10)
        assert raised.value.code() == code
        assert fragment in (raised.value.details() or "")
    await cluster.assert_converged()


async def test_status_names_every_member_the_leader_and_their_lag(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    async with cluster.channel(cluster.nodes[0]) as channel:
        status = await cluster_pb2_grpc.ClusterStub(channel).Status(empty_pb2.Empty())
    assert status.leader_grpc_addr == leader.grpc_addr
    assert sorted(m.raft_addr for m in status.members) == sorted(n.raft_addr for n in cluster.nodes)
    assert {m.node_id for m in status.members} == {"1", "2", "3"}
    await cluster.assert_converged()


def test_a_write_without_quorum_gets_unavailable_saying_to_retry_with_its_request_id(
    tmp_path: Path,
) -> None:
    """With no quorum (two of three nodes paused) a node answers UNAVAILABLE, not UNKNOWN."""
    cluster = ProcessCluster(tmp_path, fsync="never")
    cluster.start_all()

    async def scenario() -> None:
        leader = await cluster.wait_for_leader()
        others = [n for n in cluster.nodes if n is not leader]
        for node in others:
            node.pause()
        try:
            async with cluster.channel(leader) as channel:
                stub = jsm_pb2_grpc.JobStateMachineStub(channel)
                command = codec.encode_command(c.Put("default", 1, 0, 60_000, b"x"))
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.Apply(jsm_pb2.ApplyRequest(command=command, request_id="q"))
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "request id" in (raised.value.details() or "")
        finally:
            for node in others:
                node.resume()
        await cluster.wait_for_leader()
        await cluster.assert_converged()

    try:
        asyncio.run(scenario())
    finally:
        cluster.stop_all()


async def test_every_node_serves_the_standard_health_service(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    for node in cluster.nodes:
        async with cluster.channel(node) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await cluster.assert_converged()


async def test_metrics_show_commit_latency_applied_index_and_jobs_by_state(
    cluster: ProcessCluster,
) -> None:
    queue = cluster.queue()
    await queue.apply(c.Put("metrics", 1, 0, 60_000, b"m"))
    await queue.close()
    url = cluster.metrics_url  # type: ignore[attr-defined]

    async def scrape() -> str:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        return str(text.decode())

    # Job counts are refreshed at most once a second: wait for the refresh, not a second.
    body = await async_wait_until(
        lambda: _with(scrape(), 'beanraft_jobs{state="ready"}'), 10, "ready jobs in /metrics", 0.1
    )
    assert "beanraft_applied_index " in body
    assert "beanraft_leader_changes_total" in body
    assert "beanraft_commit_latency_seconds_bucket" in body
    await cluster.assert_converged()


async def test_snapshots_taken_during_a_stream_of_puts_are_each_consistent(
    cluster: ProcessCluster,
) -> None:
    from statemachine.machine import JobStateMachine

    queue = cluster.queue()
    stop = asyncio.Event()

    async def producer() -> None:
        while not stop.is_set():
            await queue.apply(c.Put("load", 1, 0, 60_000, b"under load"))

    producers = [asyncio.create_task(producer()) for _ in range(8)]
    totals = []
    try:
        for _ in range(5):
            data, _ = await cluster.snapshot(cluster.nodes[0])
            machine = JobStateMachine.restore(data)
            machine.check_invariants()
            stats = machine.apply(c.Stats(), machine.now_ms).reply
            assert isinstance(stats, r.ServerStats)
            totals.append(stats.total_jobs)
            await asyncio.sleep(0.2)  # pacing: the snapshots spread over the stream of puts
    finally:
        stop.set()
        await asyncio.gather(*producers)
        await queue.close()
    assert totals == sorted(totals) and totals[-1] > totals[0]
    await cluster.assert_converged()


async def test_a_batch_applies_its_good_commands_and_refuses_only_the_malformed_one(
    cluster: ProcessCluster,
) -> None:
    follower = await _follower(cluster)
    good = codec.encode_command(c.Put("batch", 1, 0, 60_000, b"one"))
    batch = [
        jsm_pb2.ApplyRequest(command=good, request_id="b-1"),
        jsm_pb2.ApplyRequest(command=b"\x01junk", request_id="b-2"),
        jsm_pb2.ApplyRequest(command=good, request_id="b-1"),  # a retry: same outcome
    ]
    async with cluster.channel(follower) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        response = await stub.Apply(jsm_pb2.ApplyRequest(batch=batch), timeout=10)
    first, bad, retry = response.results
    assert first.code == 0 and retry.code == 0 and first.outcome == retry.outcome
    assert isinstance(codec.decode_outcome(first.outcome).reply, r.Inserted)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unknown value tag" in bad.message
    await cluster.assert_converged()


async def test_leave_of_an_unknown_node_is_not_found_and_says_where_to_look(
    cluster: ProcessCluster,
) -> None:
    async with cluster.channel(cluster.nodes[2]) as channel:
        stub = cluster_pb2_grpc.ClusterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Leave(cluster_pb2.LeaveRequest(node_id="no-such-node"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "beanraft cluster status" in (raised.value.details() or "")
    await cluster.assert_converged()


async def test_a_coolbeans_queued_reserve_is_matched_on_stream_reserve_updates(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    async with cluster.channel(follower) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        updates = stub.StreamReserveUpdates(jsm_pb2.ReserveUpdateRequest(proxy_id="cb-px"))
        # The stream is attached before the reserve (its server-side subscription is not
        # observable from here, so this is a fixed allowance).
        await asyncio.sleep(0.3)
        queued = await stub.Reserve(
            jsm_pb2.ReserveRequest(
                client_id="cb-c1",
                request_id="cb-r1",
                timeout_secs=30,
                watched_tubes=["cb-wait"],
                proxy_id="cb-px",
            )
        )
        assert queued.reservation.Status == jsm_pb2.Queued
        put = await stub.Put(jsm_pb2.PutRequest(ttr=30, tube_name="cb-wait", body=b"w"))
        update = await asyncio.wait_for(updates.read(), 10)
        updates.cancel()
    resv = update.reservation
    assert (resv.Status, resv.job_id, resv.body) == (jsm_pb2.Matched, put.job_id, b"w")
    assert (resv.client_id, resv.request_id, resv.proxy_id) == ("cb-c1", "cb-r1", "cb-px")
    await cluster.assert_converged()


async def test_stream_reserve_updates_resumes_after_seq_and_loses_no_wakeup(
    cluster: ProcessCluster,
) -> None:
    # A wake-up produced while the proxy's stream was down (a leader change) is delivered when
    # it reattaches, to any node, with the last sequence number it saw.
    leader = await cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    async with cluster.channel(leader) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        updates = stub.StreamReserveUpdates(jsm_pb2.ReserveUpdateRequest(proxy_id="rs-px"))
        await asyncio.sleep(0.3)  # attached before the reserve, as above
        first = await _queued_then_matched(stub, "rs-c1", "rs-r1", updates)
        updates.cancel()  # the stream breaks: nobody is attached for the next wake-up
        await _queued_then_matched(stub, "rs-c2", "rs-r2", None)
    async with cluster.channel(follower) as channel:
        stub = jsm_pb2_grpc.JobStateMachineStub(channel)
        request = jsm_pb2.ReserveUpdateRequest(proxy_id="rs-px", after_seq=first.seq)
        resumed = stub.StreamReserveUpdates(request)
        missed = await asyncio.wait_for(resumed.read(), 10)
        resumed.cancel()
    assert missed.seq > first.seq
    resv = missed.reservation
    assert (resv.Status, resv.client_id, resv.request_id) == (jsm_pb2.Matched, "rs-c2", "rs-r2")
    await cluster.assert_converged()


async def _queued_then_matched(stub: Any, client_id: str, request_id: str, updates: Any) -> Any:
    """Queue a coolbeans reserve on an empty tube, put a job there; return the stream's update
    (None when ``updates`` is None: nobody is listening)."""
    tube = f"rs-{client_id}"
    queued = await stub.Reserve(
        jsm_pb2.ReserveRequest(
            client_id=client_id,
            request_id=request_id,
            timeout_secs=30,
            watched_tubes=[tube],
            proxy_id="rs-px",
        )
    )
    assert queued.reservation.Status == jsm_pb2.Queued
    await stub.Put(jsm_pb2.PutRequest(ttr=30, tube_name=tube, body=b"w"))
    if updates is None:
        return None
    return await asyncio.wait_for(updates.read(), 10)


async def test_apply_stream_answers_each_call_by_its_id_and_a_bad_command_only_in_its_own_result(
    cluster: ProcessCluster,
) -> None:
    follower = await _follower(cluster)
    good = codec.encode_command(c.Put("stream", 1, 0, 60_000, b"s"))
    peek = codec.encode_command(c.PeekReady("stream"))
    async with cluster.channel(follower) as channel:
        call = jsm_pb2_grpc.JobStateMachineStub(channel).ApplyStream()
        await call.write(
            jsm_pb2.ApplyStreamRequest(
                call_id=7,
                batch=[
                    jsm_pb2.ApplyRequest(command=good, request_id="s-1"),
                    jsm_pb2.ApplyRequest(command=b"\x01junk", request_id="s-2"),
                ],
            )
        )
        await call.write(
            jsm_pb2.ApplyStreamRequest(
                call_id=9, batch=[jsm_pb2.ApplyRequest(command=good, request_id="s-1")]
            )
        )
        answers = {}
        for _ in range(2):
            answer = await asyncio.wait_for(call.read(), 10)
            answers[answer.call_id] = answer
        # The stream stays usable after a call with a bad command.
        await call.write(
            jsm_pb2.ApplyStreamRequest(call_id=11, batch=[jsm_pb2.ApplyRequest(command=peek)])
        )
        later = await asyncio.wait_for(call.read(), 10)
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
    assert sorted(answers) == [7, 9] and later.call_id == 11
    inserted, bad = answers[7].results
    assert answers[7].code == 0 and answers[7].leader_hint  # forwarded: where to go next
    assert isinstance(codec.decode_outcome(inserted.outcome).reply, r.Inserted)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[9].results[0].outcome == inserted.outcome  # a retry: the first outcome
    found = codec.decode_outcome(later.results[0].outcome).reply
    assert isinstance(found, r.Found) and found.body == b"s"
    await cluster.assert_converged()


async def test_remote_queue_goes_on_over_a_new_stream_when_the_leader_is_killed(
    cluster: ProcessCluster,
) -> None:
    """The queue's stream to the leader dies with it: its calls go on over another node once
    a new leader is elected, and a retried put is not applied twice (its request id)."""

    from api.client import RemoteQueue

    leader = await cluster.wait_for_leader()
    others = [n.grpc_addr for n in cluster.nodes if n is not leader]
    queue = RemoteQueue([leader.grpc_addr, *others], cluster.tls_dir, "admin")
    try:
        first = await queue.apply(c.Put("killed", 1, 0, 60_000, b"1", request_id="k-1"))
        leader.kill()
        second = await queue.apply(c.Put("killed", 1, 0, 60_000, b"2", request_id="k-2"))
        again = await queue.apply(c.Put("killed", 1, 0, 60_000, b"2", request_id="k-2"))
        stats = await queue.apply(c.StatsTube("killed"))
    finally:
        await queue.close()
        leader.restart()
        await cluster.wait_for_leader()
    assert isinstance(first, r.Inserted) and isinstance(second, r.Inserted)
    assert again == second
    assert isinstance(stats, r.TubeStats) and stats.total_jobs == 2
    await cluster.assert_converged()


async def test_remote_queue_sends_what_queues_behind_a_call_in_one_batch_not_one_alone_first(
    cluster: ProcessCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an answer to a crowd, with one call out, the next ones wait a moment for
    company: ten puts made together behind a first one travel in one call (sent at once, the
    first of the ten would go alone and the other nine after it)."""
    from api.client import ApplyStream, RemoteQueue

    calls: list[int] = []  # the number of commands in each call, as the queue sends them
    real_call = ApplyStream.call

    async def counted(self: ApplyStream, batch: Any, timeout_s: float) -> Any:
        calls.append(len(batch))
        return await real_call(self, batch, timeout_s)

    monkeypatch.setattr(ApplyStream, "call", counted)

    leader = await cluster.wait_for_leader()
    queue = RemoteQueue([leader.grpc_addr], cluster.tls_dir, "admin")
    try:
        # A crowd of puts: the stream is open, and the last answer went to several.
        await asyncio.gather(*(queue.apply(c.Put("held", 1, 0, 60_000, b"w")) for _ in range(6)))
        calls.clear()
        first = asyncio.ensure_future(queue.apply(c.Put("held", 1, 0, 60_000, b"0")))
        await asyncio.sleep(0)  # the first call is out
        rest = asyncio.gather(
            *(queue.apply(c.Put("held", 1, 0, 60_000, b"%d" % i)) for i in range(1, 11))
        )
        replies = [await first, *await rest]
    finally:
        await queue.close()
    assert all(isinstance(reply, r.Inserted) for reply in replies)
    assert calls == [1, 10]
    await cluster.assert_converged()
