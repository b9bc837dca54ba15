"""A cluster with mTLS: its own certificates work, anything else is refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from process_harness import ProcessCluster

from api import jsm_pb2, jsm_pb2_grpc
from api.client import open_channel
from statemachine import commands as c
from statemachine import replies as r

pytestmark = pytest.mark.slow


def _certs(tls_dir: Path, *issues: tuple[str, str]) -> None:
    base = [sys.executable, "-m", "beanraft", "certs"]
    subprocess.run([*base, "init", "--dir", str(tls_dir)], check=True, capture_output=True)
    for role, name in issues:
        argv = [*base, "issue", "--dir", str(tls_dir), "--role", role, "--name", name]
        subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    root = tmp_path_factory.mktemp("tls")
    tls_dir = root / "tls"
    nodes = [("node", f"node-{i}") for i in (1, 2, 3)]
    _certs(tls_dir, *nodes, ("admin", "admin"), ("viewer", "viewer"))
    _certs(root / "foreign", ("admin", "admin"))
    cluster = ProcessCluster(root, tls_dir=tls_dir)
    cluster.start_all()
    try:
        asyncio.run(cluster.wait_for_leader())
        yield cluster
    finally:
        cluster.stop_all()


async def test_the_clusters_own_certificates_replicate_and_forward_writes(
    cluster: ProcessCluster,
) -> None:
    queue = cluster.queue()
    assert isinstance(await queue.apply(c.Put("default", 1, 0, 60_000, b"tls")), r.Inserted)
    await queue.close()
    await cluster.assert_converged()


def _put_request() -> jsm_pb2.PutRequest:
    return jsm_pb2.PutRequest(tube_name="default", ttr=10, body=b"x", body_size=1)


async def test_a_certificate_from_another_ca_is_refused(cluster: ProcessCluster) -> None:
    foreign = cluster.root / "foreign"
    async with open_channel(cluster.nodes[0].grpc_addr, foreign, "admin") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jsm_pb2_grpc.JobStateMachineStub(channel).Put(_put_request(), timeout=5)
    assert raised.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await cluster.assert_converged()


async def test_a_plaintext_client_is_refused(cluster: ProcessCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.nodes[0].grpc_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jsm_pb2_grpc.JobStateMachineStub(channel).Put(_put_request(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    await cluster.assert_converged()


async def test_a_viewer_certificate_may_not_put(cluster: ProcessCluster) -> None:
    tls_dir = cluster.tls_dir
    assert tls_dir is not None
    async with open_channel(cluster.nodes[1].grpc_addr, tls_dir, "viewer") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jsm_pb2_grpc.JobStateMachineStub(channel).Put(_put_request(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "viewer" in (raised.value.details() or "")
    await cluster.assert_converged()
