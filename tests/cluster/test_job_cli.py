"""`beanraft job run|status|list|stop|log` and the Python client (api/jobs.py) against a real
3-node mTLS cluster, finding it the way a user after `beanraft up` does: through the client file
(BEANRAFT_CONFIG), with no address or certificate flag."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_harness import ProcessCluster, issue_test_certificates

from api.jobs import AsyncJobClient, JobApiError, JobClient
from cluster import client_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    root = tmp_path_factory.mktemp("jobcli")
    tls_dir = issue_test_certificates(root / "tls")
    procs = ProcessCluster(root / "cluster", 3, tls_dir)
    procs.start_all()
    try:
        asyncio.run(procs.wait_for_leader())
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def config_file(cluster: ProcessCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "client.json"
    client_config.write([n.grpc_addr for n in cluster.nodes], cluster.tls_dir, path)
    return path


def job(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEANRAFT_")}
    env["BEANRAFT_CONFIG"] = str(config) if config else "/nonexistent/client.json"
    return subprocess.run(
        [sys.executable, "-m", "beanraft", "job", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_status_list_and_stop_with_no_flags_as_joblet_prints_them(config_file: Path) -> None:
    started = job(config_file, "run", "--max-cpu", "50", "--max-memory", "64", "--", "echo", "hi")
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    assert lines[0] == "Job started:"
    job_id = lines[1].removeprefix("ID: ")
    assert lines[2:5] == ["Command: echo hi", "Status: INITIALIZING", "StartTime: "]
    assert "MaxCPU: 50" in lines and "MaxMemory: 64" in lines
    status = job(config_file, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert f"Id: {job_id}" in status.stdout and "Status: INITIALIZING" in status.stdout
    assert "MaxIOBPS: 0" in status.stdout and "ExitCode: 0" in status.stdout
    listed = job(config_file, "list")
    assert f"{job_id} INITIALIZING StartTime:  Command: echo hi" in listed.stdout.splitlines()
    stopped = job(config_file, "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines()[:4] == [
        "Job stopped successfully:",
        f"ID: {job_id}",
        "Status: STOPPED",
        "ExitCode: -1",
    ]
    only_stopped = job(config_file, "list", "--status", "stopped", "--json")
    assert job_id in {str(j["id"]) for j in json.loads(only_stopped.stdout)}
    log = job(config_file, "log", job_id)
    assert log.returncode == 0 and log.stdout == ""  # stopped before it ran: no output


def test_json_output_is_parseable_everywhere(config_file: Path) -> None:
    started = json.loads(job(config_file, "run", "--json", "--", "true").stdout)
    job_id = str(started["id"])
    assert started["status"] == "INITIALIZING" and started["details"]["queue_state"] == "ready"
    status = json.loads(job(config_file, "status", job_id, "--json").stdout)
    assert status["id"] == started["id"] and status["command"] == "true"
    stopped = json.loads(job(config_file, "stop", job_id, "--json").stdout)
    assert stopped["status"] == "STOPPED" and stopped["exitCode"] == -1


def test_errors_are_one_line_with_joblet_words_and_no_traceback(config_file: Path) -> None:
    missing = job(config_file, "status", "999999")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: job not found: 999999"
    no_command = job(config_file, "run")
    assert no_command.returncode == 2 and "no command given" in no_command.stderr
    nowhere = job(None, "list")
    assert nowhere.returncode == 2
    assert "no cluster given" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_the_python_client_runs_lists_and_stops_sync_and_async(cluster: ProcessCluster) -> None:
    addresses = [n.grpc_addr for n in cluster.nodes]
    with JobClient(addresses, cluster.tls_dir) as client:
        made = client.run("sleep", ["30"], max_memory_mb=32, env={"A": "1"}, tube="pyclient")
        assert made.status == "INITIALIZING" and made.details["env"] == ["A=1"]
        assert made.id in [j.id for j in client.list(["INITIALIZING"], page_size=2)]
        assert client.stop(made.id)["status"] == "STOPPED"
        with pytest.raises(JobApiError) as caught:
            client.stop(made.id)
        assert str(caught.value) == f"job is not running: {made.id} (current status: STOPPED)"

    async def use_async() -> None:
        async with AsyncJobClient(list(reversed(addresses)), cluster.tls_dir) as client:
            made = await client.run("true")
            seen = await client.status(made.id)
            assert seen.id == made.id
            assert [chunk async for chunk in client.logs(made.id, follow=False)] == []

    asyncio.run(use_async())


def test_the_python_client_moves_to_another_node_when_one_is_down(
    cluster: ProcessCluster,
) -> None:
    dead = "127.0.0.1:1"  # nothing listens there
    with JobClient([dead, cluster.nodes[0].grpc_addr], cluster.tls_dir) as client:
        made = client.run("true", request_id="pyclient-failover-1")
        assert client.status(made.id).id == made.id


def test_retention_is_set_through_the_log_and_removes_what_it_no_longer_keeps(
    config_file: Path,
) -> None:
    ids = [
        json.loads(job(config_file, "run", "--json", "--", "true").stdout)["id"] for _ in range(3)
    ]
    for job_id in ids:
        assert job(config_file, "stop", str(job_id)).returncode == 0
    applied = job(config_file, "retention", "--max-records", "1", "--max-age-days", "7")
    assert applied.returncode == 0, applied.stderr
    assert "at most 1" in applied.stdout
    listed = {j["id"] for j in json.loads(job(config_file, "list", "--json").stdout)}
    assert ids[-1] in listed and not {ids[0], ids[1]} & listed  # the newest finished one stays
    restored = job(config_file, "retention", "--max-records", "100000", "--max-age-days", "7")
    assert restored.returncode == 0
    refused = job(config_file, "retention", "--max-records", "-1", "--max-age-days", "7")
    assert refused.returncode == 2 and "0 or more" in refused.stderr


def cluster_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEANRAFT_")}
    env["BEANRAFT_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "beanraft", "cluster", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_join_refuses_a_taken_id_a_taken_address_and_a_malformed_one(
    cluster: ProcessCluster, config_file: Path
) -> None:
    taken_id = cluster_cli(config_file, "join", "--node-id", "2", "--raft-addr", "127.0.0.1:9")
    assert taken_id.returncode == 1
    assert (
        "ALREADY_EXISTS" in taken_id.stderr and "node id 2 is already a member" in taken_id.stderr
    )
    addr = cluster.nodes[0].raft_addr
    taken_addr = cluster_cli(config_file, "join", "--node-id", "9", "--raft-addr", addr)
    assert taken_addr.returncode == 1 and f"{addr} is already the Raft address" in taken_addr.stderr
    bad = cluster_cli(config_file, "join", "--node-id", "9", "--raft-addr", "nonsense")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "is not HOST:PORT" in bad.stderr
    assert "Traceback" not in bad.stderr + taken_id.stderr + taken_addr.stderr


def test_a_member_that_never_started_is_listed_by_id_and_can_leave(
    cluster: ProcessCluster, config_file: Path
) -> None:
    from cluster_harness import free_ports

    ghost = f"127.0.0.1:{free_ports(1)[0]}"
    joined = cluster_cli(config_file, "join", "--node-id", "7", "--raft-addr", ghost)
    assert joined.returncode == 0, joined.stderr
    status = json.loads(cluster_cli(config_file, "status", "--json").stdout)
    assert "7" in json.dumps(status)
    left = cluster_cli(config_file, "leave", "--node-id", "7")
    assert left.returncode == 0, left.stderr
    after = cluster_cli(config_file, "status", "--json").stdout
    assert ghost not in after
