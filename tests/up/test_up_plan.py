"""beanraft up's plan: ports, up.json, secrets and every child's argv, without processes."""

from __future__ import annotations

import json
import socket
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from api import tls
from beanraft.up_plan import (
    UpError,
    check_ports_free,
    child_specs,
    client_addr,
    ensure_secrets,
    free_ports,
    load_state,
    resolve_state,
    save_state,
)

BEANRAFT = ["python", "-m", "beanraft"]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(10)
    assert len(set(ports)) == 10
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_first_run_chooses_loopback_addresses_for_every_node(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=5, listen=None)
    assert [n.node_id for n in state.nodes] == ["1", "2", "3", "4", "5"]
    addrs = [a for n in state.nodes for a in (n.raft_addr, n.grpc_addr, n.metrics_addr)]
    assert len(set(addrs)) == 15 and all(a.startswith("127.0.0.1:") for a in addrs)
    assert state.listen == "127.0.0.1:11300"


def test_second_run_resumes_the_recorded_addresses(tmp_path: Path) -> None:
    first = resolve_state(tmp_path, nodes=3, listen="127.0.0.1:4000")
    save_state(tmp_path, first)
    assert json.loads((tmp_path / "up.json").read_text())["nodes"][0]["node_id"] == "1"
    assert load_state(tmp_path) == first
    assert resolve_state(tmp_path, nodes=None, listen=None) == first
    moved = resolve_state(tmp_path, nodes=3, listen="127.0.0.1:5000")
    assert moved.nodes[1:] == first.nodes[1:]  # only node 1's listener follows --listen
    assert moved.nodes[0] == replace(first.nodes[0], beanstalkd_addr="127.0.0.1:5000")


def test_an_up_json_from_before_metrics_resumes_without_them(tmp_path: Path) -> None:
    nodes = [{"node_id": "1", "raft_addr": "127.0.0.1:7000", "grpc_addr": "127.0.0.1:7100"}]
    (tmp_path / "up.json").write_text(
        json.dumps({"version": 1, "listen": "127.0.0.1:11300", "nodes": nodes})
    )
    state = resolve_state(tmp_path, nodes=None, listen=None)
    assert state.nodes[0].metrics_addr == ""
    argv = child_specs(state, tmp_path, workers=0, insecure=False, command=BEANRAFT)[0].argv
    assert "--metrics-addr" not in argv


def test_resuming_with_another_node_count_is_refused(tmp_path: Path) -> None:
    save_state(tmp_path, resolve_state(tmp_path, nodes=3, listen=None))
    with pytest.raises(UpError, match="holds a 3-node cluster: run with --nodes 3"):
        resolve_state(tmp_path, nodes=5, listen=None)


@pytest.mark.parametrize("count", [0, 10, -1])
def test_a_node_count_outside_one_to_nine_is_refused(tmp_path: Path, count: int) -> None:
    with pytest.raises(UpError, match="--nodes must be between 1 and 9"):
        resolve_state(tmp_path, nodes=count, listen=None)


def test_a_damaged_up_json_says_so(tmp_path: Path) -> None:
    (tmp_path / "up.json").write_text("{not json")
    with pytest.raises(UpError, match=r"up\.json is damaged"):
        resolve_state(tmp_path, nodes=None, listen=None)


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=3, listen=None)
    holder = socket.create_server(("127.0.0.1", int(state.nodes[1].grpc_addr.split(":")[1])))
    try:
        with pytest.raises(UpError, match=f"{state.nodes[1].grpc_addr} \\(node 2 gRPC\\)"):
            check_ports_free(state)
    finally:
        holder.close()


@pytest.mark.parametrize("listen", ["localhost", "1.2.3.4:0", ":11300", "h:99999"])
def test_a_bad_listen_address_is_refused(tmp_path: Path, listen: str) -> None:
    state = resolve_state(tmp_path, nodes=1, listen=listen)
    with pytest.raises(UpError, match="bad address"):
        check_ports_free(state)


def test_secrets_are_created_once_with_private_modes(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=3, listen=None)
    created = ensure_secrets(tmp_path, state, insecure=False)
    names = ["node-1", "node-2", "node-3", "proxy", "admin", "worker", "viewer"]
    assert created == [
        str(tmp_path / "cluster.secret"),
        f"{tmp_path}/tls/ca.crt",
        *(f"{tmp_path}/tls/{n}.crt" for n in names),
    ]
    secret = tmp_path / "cluster.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) == 64
    for name in names:
        tls.load_identity(tmp_path / "tls", name)  # present, valid, signed by the CA
    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    assert ensure_secrets(tmp_path, state, insecure=False) == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before


def test_insecure_run_creates_only_the_cluster_secret(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=3, listen=None)
    assert ensure_secrets(tmp_path, state, insecure=True) == [str(tmp_path / "cluster.secret")]
    assert not (tmp_path / "tls").exists()


def test_children_get_the_documented_flags(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=3, listen="127.0.0.1:11311")
    specs = child_specs(state, tmp_path, workers=4, insecure=False, command=BEANRAFT)
    assert [s.name for s in specs] == ["node-1", "node-2", "node-3", "worker"]
    n1, n2, n3 = state.nodes
    assert specs[0].argv == [
        *BEANRAFT, "node", "--node-id", "1", "--data-dir", f"{tmp_path}/node-1",
        "--raft-addr", n1.raft_addr, "--grpc-addr", n1.grpc_addr,
        "--metrics-addr", n1.metrics_addr, "--beanstalkd-listen", "127.0.0.1:11311",
        "--peers", f"{n2.raft_addr},{n3.raft_addr}",
        "--tls-dir", f"{tmp_path}/tls", "--cluster-secret-file", f"{tmp_path}/cluster.secret",
    ]  # fmt: skip
    assert specs[1].argv[specs[1].argv.index("--beanstalkd-listen") + 1] == n2.beanstalkd_addr
    listeners = f"127.0.0.1:11311,{n2.beanstalkd_addr},{n3.beanstalkd_addr}"
    assert specs[3].argv == [
        *BEANRAFT, "worker", "--beanstalkd", listeners, "--concurrency", "4",
        "--log-dir", f"{tmp_path}/logs",
        "--cluster", f"{n1.grpc_addr},{n2.grpc_addr},{n3.grpc_addr}",
        "--tls-dir", f"{tmp_path}/tls",
    ]  # fmt: skip


def test_insecure_children_say_insecure_and_no_workers_means_no_worker(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=1, listen=None)
    specs = child_specs(state, tmp_path, workers=0, insecure=True, command=BEANRAFT)
    assert [s.name for s in specs] == ["node-1"]
    assert "--insecure" in specs[0].argv and "--tls-dir" not in specs[0].argv
    assert "--peers" not in specs[0].argv


def test_every_node_gets_its_own_loopback_listener_and_node_1_the_clients_address(
    tmp_path: Path,
) -> None:
    state = resolve_state(tmp_path, nodes=3, listen="0.0.0.0:11311")
    addrs = [n.beanstalkd_addr for n in state.nodes]
    assert addrs[0] == "0.0.0.0:11311"
    assert all(a.startswith("127.0.0.1:") for a in addrs[1:]) and len(set(addrs)) == 3
    save_state(tmp_path, state)
    again = resolve_state(tmp_path, nodes=None, listen="127.0.0.1:11399")
    assert [n.beanstalkd_addr for n in again.nodes] == ["127.0.0.1:11399", *addrs[1:]]


def test_an_up_json_from_before_the_direct_path_gets_listeners_on_resume(tmp_path: Path) -> None:
    state = resolve_state(tmp_path, nodes=3, listen="127.0.0.1:11311")
    old = json.loads(json.dumps(asdict(state)))
    for node in old["nodes"]:
        del node["beanstalkd_addr"]
    (tmp_path / "up.json").write_text(json.dumps(old))
    resumed = resolve_state(tmp_path, nodes=None, listen=None)
    assert resumed.nodes[0].beanstalkd_addr == "127.0.0.1:11311"
    assert all(n.beanstalkd_addr.startswith("127.0.0.1:") for n in resumed.nodes[1:])
    assert [n.raft_addr for n in resumed.nodes] == [n.raft_addr for n in state.nodes]


def test_a_worker_dials_loopback_when_node_1_listens_on_every_interface() -> None:
    assert client_addr("0.0.0.0:11300") == "127.0.0.1:11300"
    assert client_addr("127.0.0.1:7") == "127.0.0.1:7"
