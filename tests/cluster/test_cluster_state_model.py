"""``ClusterState.apply`` against a simple model, on random sequences of log entries
(hypothesis): what the cluster adds to the machine (the request window, the wake-up ring, the
member directory, the time clamp) is pure and deterministic.

The model: a plain ``JobStateMachine`` to which each command is applied once (a request id
seen within the window is answered with its first outcome and applied no more), a dict of
members, the wake-ups counted in order, and the time as the running maximum of the stamps of
the entries whose commands were applied (one clamp: the machine's; a retry or a membership
change moves no time). After every entry the cluster state must agree with it, and a second
``ClusterState`` given the same entries must hold the same bytes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import envelope
from cluster.replicated import OK, REQUEST_WINDOW_MS, ClusterState
from statemachine import codec
from statemachine import commands as c
from statemachine.machine import JobStateMachine, MachineConfig
from statemachine.replies import Ok, Reply

CLIENTS = ("a", "b")
ADDRS = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")


@dataclass(frozen=True)
class Step:
    kind: str  # "put", "reserve", "retry", "member", "forget"
    arg: int


steps = st.lists(
    st.builds(
        Step,
        st.sampled_from(["put", "put", "reserve", "retry", "member", "forget"]),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=40,
)
# Mostly forward, sometimes past the request window, sometimes backwards (a new leader whose
# clock is behind): the state must clamp.
time_steps = st.lists(
    st.sampled_from([0, 1, 50, 1_000, -500, REQUEST_WINDOW_MS - 300, REQUEST_WINDOW_MS + 1]),
    min_size=40,
    max_size=40,
)
entry_sizes = st.lists(st.integers(1, 4), min_size=40, max_size=40)


def _command(step: Step, n: int) -> tuple[c.Command, str]:
    client = CLIENTS[step.arg % len(CLIENTS)]
    if step.kind == "reserve":
        return c.Reserve(client, None), f"reserve-{n}"
    return c.Put("t", step.arg, 0, 60_000, b"job-%d" % n), f"put-{n}"


def _requests(history: list[Step], already: list[tuple[c.Command, str]]) -> list[object]:
    """Each step as a log request; ``already`` collects the commands made, for retries."""
    out: list[object] = []
    for step in history:
        n = len(already)
        if step.kind == "retry" and already:
            command, request_id = already[step.arg % len(already)]
            out.append(("command", command, request_id))
        elif step.kind == "member":
            addr = ADDRS[step.arg % len(ADDRS)]
            out.append(("member", str(step.arg), addr))
        elif step.kind == "forget":
            out.append(("forget", ADDRS[step.arg % len(ADDRS)]))
        else:
            command, request_id = _command(step, n)
            already.append((command, request_id))
            out.append(("command", command, request_id))
    return out


def _envelope(item: tuple[object, ...]) -> envelope.Request:
    if item[0] == "member":
        _, node_id, addr = item
        payload = envelope.encode_member(str(node_id), f"grpc-{node_id}", str(addr), "inc")
        return envelope.Request(envelope.MEMBER, "", payload)
    if item[0] == "forget":
        return envelope.Request(envelope.FORGET, "", envelope.encode_forget(str(item[1]), ""))
    _, command, request_id = item
    assert isinstance(command, c.Put | c.Reserve)
    return envelope.Request(
        envelope.COMMAND, str(request_id), codec.encode_command(command), command
    )


class Model:
    def __init__(self, connect_at_ms: int) -> None:
        self.machine = JobStateMachine(MachineConfig())
        self.window: dict[str, tuple[int, Reply]] = {}
        self.members: dict[str, tuple[str, str]] = {}
        self.wakeups = 0
        self.now_ms = connect_at_ms
        for client in CLIENTS:
            self.machine.apply(c.Connect(client, "proxy-1"), connect_at_ms)

    def apply(self, item: tuple[object, ...], now_ms: int) -> Reply:
        if item[0] == "member":
            _, node_id, addr = item
            self.members[str(addr)] = (str(node_id), f"grpc-{node_id}")
            return Ok()
        if item[0] == "forget":
            self.members.pop(str(item[1]), None)
            return Ok()
        _, command, request_id = item
        first = self.window.get(str(request_id))
        if first is not None:
            return first[1]
        self.now_ms = max(self.now_ms, now_ms)
        outcome = self.machine.apply(command, now_ms)  # type: ignore[arg-type]
        self.wakeups += len(outcome.wakeups)
        self.window[str(request_id)] = (self.now_ms, outcome.reply)  # the caller's part only
        return outcome.reply

    def end_entry(self) -> None:
        horizon_ms = self.now_ms - REQUEST_WINDOW_MS
        self.window = {k: v for k, v in self.window.items() if v[0] >= horizon_ms}


def _connected_state(start_ms: int) -> ClusterState:
    machine = JobStateMachine(MachineConfig())
    for client in CLIENTS:
        machine.apply(c.Connect(client, "proxy-1"), start_ms)
    return ClusterState(machine)


@settings(max_examples=150, deadline=None)
@given(history=steps, times=time_steps, sizes=entry_sizes)
def test_cluster_state_applies_each_command_once_and_agrees_with_the_model(
    history: list[Step], times: list[int], sizes: list[int]
) -> None:
    start_ms = 1_700_000_000_000
    state, twin, model = _connected_state(start_ms), _connected_state(start_ms), Model(start_ms)
    items = _requests(history, [])
    now_ms = start_ms
    position = 0
    for entry_number, size in enumerate(sizes):
        entry = items[position : position + size]
        if not entry:
            break
        position += size
        now_ms += times[entry_number]
        requests = [_envelope(item) for item in entry]
        applied = state.apply(requests, now_ms)
        twin.apply([_envelope(item) for item in entry], now_ms)
        expected = [model.apply(item, now_ms) for item in entry]
        model.end_entry()
        assert [status for status, _ in applied.results] == [OK] * len(entry)
        assert [payload for _, payload in applied.results] == expected
        assert state.machine.snapshot() == model.machine.snapshot()  # each command once
        assert state.members == model.members
        assert state.now_ms == model.now_ms  # clamped once, by the machine: never backwards
        assert dict(state.requests) == model.window  # stamped by the one clamped time
        assert state.wakeups.last_seq == model.wakeups
        seqs = [seq for seq, _, _ in state.wakeups.ring]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
        assert state.to_bytes() == twin.to_bytes()  # deterministic
    assert ClusterState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()


def test_a_forget_of_this_node_is_reported_with_the_incarnation_it_names() -> None:
    state = _connected_state(1_700_000_000_000)
    forget = envelope.Request(envelope.FORGET, "", envelope.encode_forget(ADDRS[0], "inc-1"))
    applied = state.apply([forget], 1_700_000_000_001)
    assert applied.forgotten == [(ADDRS[0], "inc-1")]
    assert applied.results == [(OK, Ok())]
