"""A joblet user's client, generated from joblet's own definitions, calls a real node unchanged.

joblet_seed.proto (beside this file) is joblet's API as its document gives it, with none of
beanraft's extensions. At test time ``grpc_tools.protoc`` generates Python code from it into a
temporary directory; a small client script there, which imports only that generated code, grpc
and protobuf (never beanraft's), calls a real 3-node cluster over mTLS with the admin or viewer
certificate files, exactly as a joblet user's client would.

The client runs in a subprocess: beanraft's own api/joblet_pb2 registers the same symbols
(``joblet.Job``, ...) in protobuf's default descriptor pool, so the two cannot be loaded in
one process. The script reads its calls as JSON on stdin and prints their results as JSON.
No worker runs here: a job stays queued (INITIALIZING) until it is stopped.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_tools import protoc
from process_harness import ProcessCluster, issue_test_certificates

pytestmark = pytest.mark.slow

SEED_PROTO = Path(__file__).with_name("joblet_seed.proto")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

CLIENT_SCRIPT = '''\
"""A joblet client: only protoc's code generated from joblet_seed.proto, grpc and protobuf.

usage: client.py ADDRESS CA_CERT CLIENT_CERT CLIENT_KEY < calls.json
calls.json: [{"method": "RunJob", "request": {...}, "timeout": 10}, ...]
prints {"results": [...], "loaded": [beanraft modules imported, expected none]}
"""
import json
import sys

import grpc
from google.protobuf.message import Message

import joblet_seed_pb2
import joblet_seed_pb2_grpc

STREAMING = {"GetJobLogs"}


def plain(value):
    if isinstance(value, Message):
        return {f.name: plain(getattr(value, f.name)) for f in value.DESCRIPTOR.fields}
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (str, int, float, bool)):
        return value
    return [plain(item) for item in value]


def main():
    address, ca, cert, key = sys.argv[1:5]
    calls = json.load(sys.stdin)
    with open(ca, "rb") as f:
        ca_pem = f.read()
    with open(cert, "rb") as f:
        cert_pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    service = joblet_seed_pb2.DESCRIPTOR.services_by_name["JobletService"]
    results = []
    with grpc.secure_channel(address, credentials) as channel:
        stub = joblet_seed_pb2_grpc.JobletServiceStub(channel)
        for call in calls:
            method = call["method"]
            request_type = getattr(joblet_seed_pb2, service.methods_by_name[method].input_type.name)
            request = request_type(**call.get("request", {}))
            timeout = call.get("timeout", 10)
            try:
                if method in STREAMING:
                    chunks = [plain(c) for c in getattr(stub, method)(request, timeout=timeout)]
                    results.append({"ok": True, "responses": chunks})
                else:
                    response = getattr(stub, method)(request, timeout=timeout)
                    results.append({"ok": True, "response": plain(response)})
            except grpc.RpcError as exc:
                results.append({"ok": False, "code": exc.code().name, "details": exc.details()})
    ours = ("api", "cluster", "statemachine", "beanraft", "executor", "proxy")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ours)
    print(json.dumps({"results": results, "loaded": loaded}))


main()
'''


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """protoc's Python code for joblet_seed.proto and the client script, in a directory of
    their own."""
    out = tmp_path_factory.mktemp("joblet-generated")
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SEED_PROTO.parent}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(SEED_PROTO),
        ]
    )
    assert status == 0, "protoc could not generate code from joblet_seed.proto"
    assert (out / "joblet_seed_pb2.py").exists() and (out / "joblet_seed_pb2_grpc.py").exists()
    (out / "client.py").write_text(CLIENT_SCRIPT)
    return out


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("joblet-seed") / "tls"
    return issue_test_certificates(directory)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path_factory.mktemp("joblet-seed-cluster"), 3, tls_dir)
    procs.start_all()
    try:
        asyncio.run(procs.wait_for_leader())
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def address(cluster: ProcessCluster) -> str:
    """A follower's address: a user may reach any node, and a follower forwards writes."""
    leader = asyncio.run(cluster.wait_for_leader())
    return next(n for n in cluster.nodes if n is not leader).grpc_addr


def generated_client(
    client_dir: Path, tls_dir: Path, address: str, calls: list[dict[str, Any]], role: str = "admin"
) -> list[dict[str, Any]]:
    """Run ``calls`` with the generated client as ``role``; one result per call."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, str(client_dir / "client.py"), address, str(tls_dir / "ca.crt")]
    argv += [str(tls_dir / f"{role}.crt"), str(tls_dir / f"{role}.key")]
    done = subprocess.run(
        argv,
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        cwd=client_dir,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["loaded"] == [], "the generated client must not use beanraft's code"
    results: list[dict[str, Any]] = output["results"]
    assert len(results) == len(calls)
    return results


def run_job_request() -> dict[str, Any]:
    return {"command": "python3", "args": ["-c", "print(1)"], "maxCPU": 50, "maxMemory": 256}


def submitted(client_dir: Path, tls_dir: Path, address: str) -> dict[str, Any]:
    (result,) = generated_client(
        client_dir, tls_dir, address, [{"method": "RunJob", "request": run_job_request()}]
    )
    assert result["ok"], result
    job: dict[str, Any] = result["response"]
    return job


def assert_is_the_submitted_job(job: dict[str, Any]) -> None:
    assert job["id"].isdigit() and int(job["id"]) > 0
    assert job["status"] == "INITIALIZING"
    assert (job["command"], job["args"], job["maxCPU"], job["maxMemory"], job["maxIOBPS"]) == (
        "python3",
        ["-c", "print(1)"],
        50,
        256,
        0,
    )
    assert job["endTime"] == "" and job["exitCode"] == 0


def test_run_job_answers_with_a_numeric_id_initializing_and_the_requested_command_and_limits(
    client_dir: Path, tls_dir: Path, address: str
) -> None:
    job = submitted(client_dir, tls_dir, address)
    assert_is_the_submitted_job(job)
    assert set(job) == {
        "id",
        "command",
        "args",
        "maxCPU",
        "maxMemory",
        "maxIOBPS",
        "status",
        "startTime",
        "endTime",
        "exitCode",
    }


def test_get_job_status_returns_the_job_and_an_unknown_id_is_not_found(
    client_dir: Path, tls_dir: Path, address: str
) -> None:
    job = submitted(client_dir, tls_dir, address)
    status, unknown = generated_client(
        client_dir,
        tls_dir,
        address,
        [
            {"method": "GetJobStatus", "request": {"id": job["id"]}},
            {"method": "GetJobStatus", "request": {"id": "999999"}},
        ],
    )
    assert status["ok"], status
    assert status["response"] == job
    assert_is_the_submitted_job(status["response"])
    assert unknown == {"ok": False, "code": "NOT_FOUND", "details": "job not found: 999999"}


def test_list_jobs_contains_a_submitted_job(client_dir: Path, tls_dir: Path, address: str) -> None:
    job = submitted(client_dir, tls_dir, address)
    (listed,) = generated_client(
        client_dir, tls_dir, address, [{"method": "ListJobs", "request": {}}]
    )
    assert listed["ok"], listed
    jobs = {j["id"]: j for j in listed["response"]["jobs"]}
    assert job["id"] in jobs
    assert_is_the_submitted_job(jobs[job["id"]])


def test_stop_job_of_a_queued_job_stops_it_and_a_second_stop_is_failed_precondition(
    client_dir: Path, tls_dir: Path, address: str
) -> None:
    job = submitted(client_dir, tls_dir, address)
    stop = {"method": "StopJob", "request": {"id": job["id"]}, "timeout": 20}
    first, second, status = generated_client(
        client_dir,
        tls_dir,
        address,
        [stop, stop, {"method": "GetJobStatus", "request": {"id": job["id"]}}],
    )
    assert first["ok"], first
    stopped = first["response"]
    assert (stopped["id"], stopped["status"], stopped["exitCode"]) == (job["id"], "STOPPED", -1)
    assert RFC3339_UTC.match(stopped["endTime"]), stopped["endTime"]
    assert datetime.datetime.fromisoformat(stopped["endTime"]).tzinfo == datetime.UTC
    assert second == {
        "ok": False,
        "code": "FAILED_PRECONDITION",
        "details": f"job is not running: {job['id']} (current status: STOPPED)",
    }
    assert status["ok"], status
    assert (status["response"]["status"], status["response"]["exitCode"]) == ("STOPPED", -1)
    assert status["response"]["endTime"] == stopped["endTime"]


def test_get_job_logs_of_a_stopped_job_that_never_ran_ends_without_data_or_error(
    client_dir: Path, tls_dir: Path, address: str
) -> None:
    job = submitted(client_dir, tls_dir, address)
    stopped, logs = generated_client(
        client_dir,
        tls_dir,
        address,
        [
            {"method": "StopJob", "request": {"id": job["id"]}, "timeout": 20},
            {"method": "GetJobLogs", "request": {"id": job["id"]}, "timeout": 10},
        ],
    )
    assert stopped["ok"] and stopped["response"]["status"] == "STOPPED", stopped
    assert logs == {"ok": True, "responses": []}


def test_a_viewer_certificate_may_not_run_a_job(
    client_dir: Path, tls_dir: Path, address: str
) -> None:
    (refused,) = generated_client(
        client_dir,
        tls_dir,
        address,
        [{"method": "RunJob", "request": run_job_request()}],
        role="viewer",
    )
    assert not refused["ok"], refused
    assert refused["code"] == "PERMISSION_DENIED"
    assert refused["details"].startswith(
        "role viewer is not allowed to perform operation run_job"
    ), refused["details"]
