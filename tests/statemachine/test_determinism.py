"""Determinism: the same commands give the same bytes, in one process or in two.

Replicas stay equal only if ``apply`` is a pure function of the state and the command. The ways
Python breaks that quietly are hash order (string hashing is randomized per process), object
identity and anything read from the environment. These tests feed one seeded workload to two
machines in this process, to two fresh interpreters with different ``PYTHONHASHSEED`` values,
and through a snapshot and restore halfway, and require equal snapshot bytes and equal outcomes.

The workload is a seeded ``random.Random`` (not hypothesis) so that a subprocess can rebuild it
from the seed alone: ``random_commands(seed, count)``.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine, MachineConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEEDS = (1, 2, 3)
COUNT = 3000
CLIENTS = tuple((f"client-{i}", f"proxy-{i % 3}") for i in range(9))
# Tube names chosen so that their string hashes differ between processes: iterating any set or
# dict keyed by them in hash order would show up as different bytes.
TUBES = ("default", "emails", "thumbs", "reports", "z", "a.b", "q(1)", "$x")


def random_commands(seed: int, count: int) -> list[tuple[int, c.Command]]:
    """A reproducible mixed workload: (now_ms, command) pairs, time mostly moving forward."""
    rng = random.Random(seed)
    now_ms = 1_000_000
    out: list[tuple[int, c.Command]] = [(now_ms, c.Connect(cl, px)) for cl, px in CLIENTS]
    puts, drained = 0, 0
    for n in range(count):
        now_ms += rng.choice((0, 0, 1, 10, 100, 999, 1000, 1500, 5000, 15_000, -3000))
        draining = (n // 200) % 2 == 1 and rng.random() < 0.6
        if draining and drained < puts and rng.random() < 0.6:
            # Busy and quiet phases alternate: an admin deletes the oldest jobs, so that
            # reserves find nothing and wait, time out and get woken by later puts.
            drained += 1
            commands: list[c.Command] = [c.Delete("", drained)]
        elif draining:
            client, _ = rng.choice(CLIENTS)
            commands = [c.Reserve(client, rng.choice((None, 1000, 3000, 20_000)), "", True)]
        else:
            commands = _commands(rng, n, puts)
        for command in commands:
            puts += isinstance(command, c.Put)
            out.append((now_ms, command))
    return out


def _commands(rng: random.Random, n: int, puts: int) -> list[c.Command]:
    """One command, or a reserve-job followed by what a worker does with the job."""
    if rng.random() < 0.15:
        client, _ = rng.choice(CLIENTS)
        job_id = rng.randint(max(1, puts - 8), puts + 1)
        finish: list[c.Command] = [
            c.Release(client, job_id, rng.randint(0, 9), rng.choice((0, 0, 1000))),
            c.Bury(client, job_id, rng.randint(0, 9)),
            c.Touch(client, job_id),
            c.Delete(client, job_id),
        ]
        return [c.ReserveJob(client, job_id), rng.choice(finish)]
    return [_command(rng, n, puts)]


def _command(rng: random.Random, n: int, puts: int) -> c.Command:
    client, proxy = rng.choice(CLIENTS)
    tube = rng.choice(TUBES)
    job_id = rng.randint(max(1, puts - 8), puts + 1)  # mostly recent jobs, sometimes none
    request_id = f"r{n}" if rng.random() < 0.3 else ""
    choices: list[c.Command] = [
        c.Put(
            tube,
            rng.choice((0, 10, 1024, 2**32 - 1)),
            rng.choice((0, 0, 0, 2000)),
            rng.choice((0, 1000, 3000, 60_000)),
            b"%d" % n,
            client,
            request_id,
        ),
        c.Put(tube, rng.randint(0, 50), 0, 1000, b"b" * rng.randint(0, 100)),
        c.Reserve(client, rng.choice((None, 0, 500, 5000)), request_id),
        c.Reserve(client, 0, "", True),
        c.Reserve(client, rng.choice((1000, 3000, 20_000)), "", True),
        c.Put(tube, rng.randint(0, 9), rng.choice((500, 1500)), rng.choice((1000, 2000)), b"d"),
        c.ReserveJob(client, job_id),
        c.Delete(client, job_id),
        c.Delete("", job_id),
        c.Release(client, job_id, rng.randint(0, 100), rng.choice((0, 0, 1000))),
        c.Bury(client, job_id, rng.randint(0, 100)),
        c.Touch(client, job_id),
        c.Kick(tube, rng.randint(0, 5)),
        c.KickJob(job_id),
        c.PauseTube(tube, rng.choice((0, 1000, 10_000))),
        c.Use(client, tube),
        c.Watch(client, tube),
        c.Ignore(client, tube),
        c.Connect(client, proxy),
        c.Connect(client, proxy),
        c.Disconnect(client) if rng.random() < 0.3 else c.Tick(),
        c.RenewLease(proxy, rng.choice((2000, 600_000, 3_600_000))),
        c.DropProxy(proxy) if rng.random() < 0.05 else c.Tick(),
        c.PeekReady(tube),
        c.StatsTube(tube),
        c.StatsJob(job_id),
        c.ListTubes(),
        c.Stats(),
        c.CheckClients(proxy, tuple(cl for cl, px in CLIENTS if px == proxy)),
        c.RejectedPut(client),
    ]
    return rng.choice(choices)


def run(seed: int, count: int) -> tuple[str, str]:
    """Apply the workload to a fresh machine; sha256 of all outcomes and of the final snapshot."""
    machine = JobStateMachine(MachineConfig(max_job_size=65535))
    outcomes = hashlib.sha256()
    for now_ms, command in random_commands(seed, count):
        outcomes.update(repr(machine.apply(command, now_ms)).encode())
    return outcomes.hexdigest(), hashlib.sha256(machine.snapshot()).hexdigest()


def run_in_subprocess(seed: int, count: int, hash_seed: str) -> tuple[str, str]:
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import test_determinism as t\n"
        "print(*t.run(int(sys.argv[3]), int(sys.argv[4])))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", code, str(HERE), str(ROOT), str(seed), str(count)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"subprocess failed:\n{done.stderr}"
    outcome_hash, snapshot_hash = done.stdout.split()
    return outcome_hash, snapshot_hash


def test_workload_exercises_the_queue() -> None:
    # Guards the other tests against a workload that does nothing interesting.
    machine = JobStateMachine(MachineConfig(max_job_size=65535))
    kinds: set[str] = set()
    for now_ms, command in random_commands(SEEDS[0], COUNT):
        outcome = machine.apply(command, now_ms)
        kinds.add(type(outcome.reply).__name__)
        kinds.update(type(w.result).__name__ for w in outcome.wakeups)
    for expected in ("Inserted", "Reserved", "Waiting", "TimedOut", "Deleted", "Released"):
        assert expected in kinds


@pytest.mark.parametrize("seed", SEEDS)
def test_two_machines_fed_the_same_commands_have_equal_snapshots(seed: int) -> None:
    first = JobStateMachine(MachineConfig(max_job_size=65535))
    second = JobStateMachine(MachineConfig(max_job_size=65535))
    for now_ms, command in random_commands(seed, COUNT):
        assert first.apply(command, now_ms) == second.apply(command, now_ms)
    assert first.snapshot() == second.snapshot()


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_restore_then_continue_equals_continuing(seed: int) -> None:
    workload = random_commands(seed, COUNT)
    split = len(workload) // 2
    straight = JobStateMachine(MachineConfig(max_job_size=65535))
    for now_ms, command in workload[:split]:
        straight.apply(command, now_ms)
    restored = JobStateMachine.restore(straight.snapshot())
    for now_ms, command in workload[split:]:
        assert restored.apply(command, now_ms) == straight.apply(command, now_ms), command
    assert restored.snapshot() == straight.snapshot()
    assert restored.next_deadline_ms() == straight.next_deadline_ms()


def test_separate_processes_with_different_hash_seeds_have_equal_snapshots() -> None:
    seed, count = SEEDS[0], COUNT
    here = run(seed, count)
    first = run_in_subprocess(seed, count, hash_seed="1")
    second = run_in_subprocess(seed, count, hash_seed="4242")
    assert first == second == here


@pytest.mark.parametrize("seed", SEEDS)
def test_one_late_tick_gives_the_same_state_as_many_timely_ones(seed: int) -> None:
    # statemachine/events.py: due events are processed as if time stepped through each instant, so
    # extra Ticks between commands change nothing but where the wake-ups are reported.
    rng = random.Random(seed + 100)
    late = JobStateMachine(MachineConfig(max_job_size=65535))
    timely = JobStateMachine(MachineConfig(max_job_size=65535))
    machine_ms = 0  # the clamped time both machines are at
    for now_ms, command in random_commands(seed, COUNT):
        target_ms = max(now_ms, machine_ms)
        timely_wakeups: list[r.Wakeup] = []
        for _ in range(rng.choice((0, 1, 3))):
            machine_ms = rng.randint(machine_ms, target_ms)
            timely_wakeups += timely.apply(c.Tick(), machine_ms).wakeups
        machine_ms = target_ms
        expected = late.apply(command, now_ms)
        actual = timely.apply(command, now_ms)
        assert actual.reply == expected.reply, command
        assert tuple(timely_wakeups) + actual.wakeups == expected.wakeups, command
    assert timely.snapshot() == late.snapshot()
