"""``beanraft up``: a complete local cluster from one command.

    beanraft up [--nodes 3] [--listen 127.0.0.1:11300] [--workers N] [--data-dir DIR] [--insecure]

Theory of operation: ``up`` is only a composition of the documented commands. It starts
``beanraft node`` N times, each serving the beanstalkd protocol itself (``--beanstalkd-listen``;
node 1 on ``--listen``, the address clients are given) and, with ``--workers N``, one
``beanraft worker`` pool of concurrency N dialing every node's listener, as child processes,
exactly as an operator would by hand. No proxy: the direct path saves a process and a gRPC hop
per command (``beanraft proxy`` stays for pools that want one address for the whole cluster).

On first run it creates in DIR a CA and certificates (``tls/``: node-ID, proxy, admin, worker,
viewer), the Raft cluster secret (``cluster.secret``, mode 0600) and ``up.json`` with the chosen
ports; a later run reads ``up.json`` and starts the same nodes on the same addresses and data
dirs, so the cluster comes back with its jobs.

Rules: nothing listens beyond 127.0.0.1 except node 1's listener when ``--listen`` says so; one
``up`` per data dir (a lock file); a child that dies while starting stops everything with its last
output and a non-zero exit; Ctrl-C or SIGTERM stops workers, then the nodes (SIGTERM, a timeout,
SIGKILL); a second Ctrl-C kills at once.
"""

from __future__ import annotations

import argparse
import fcntl
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from api import tls
from beanraft.children import Child, ChildDied, ChildSpec, Supervisor
from beanraft.up_plan import (
    DEFAULT_LISTEN,
    UpError,
    UpState,
    check_ports_free,
    child_specs,
    client_addr,
    ensure_secrets,
    load_state,
    resolve_state,
    save_state,
    split_addr,
)
from cluster import client_config

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
BEANRAFT = (sys.executable, "-m", "beanraft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``beanraft up``'s flags."""
    parser.add_argument("--nodes", type=int, default=None, help="cluster size (default 3)")
    parser.add_argument(
        "--listen",
        default=None,
        help=f"where node 1 serves the beanstalkd protocol: the address for clients "
        f"(default {DEFAULT_LISTEN}; the other nodes listen on loopback ports shown at start)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="run a worker pool of this concurrency (default 0)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="state, certificates, logs (./data)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="no TLS on gRPC (development only; says so loudly)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for start"
    )


def run(args: argparse.Namespace) -> int:
    """Start the cluster, wait for Ctrl-C or SIGTERM, stop it; 0 on a clean stop."""
    return Up(args, BEANRAFT).run()


def tcp_accepts(addr: str) -> bool:
    """True if something accepts TCP connections at ``addr``."""
    try:
        with socket.create_connection(split_addr(addr), timeout=1):
            return True
    except OSError:
        return False


def beanstalkd_answers(addr: str) -> bool:
    """True if a beanstalkd server at ``addr`` answers ``stats`` with OK (the cluster behind
    it has a leader and applies commands)."""
    try:
        with socket.create_connection(split_addr(addr), timeout=2) as sock:
            sock.settimeout(5)
            sock.sendall(b"stats\r\n")
            return sock.recv(3) == b"OK "
    except OSError:
        return False


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold DIR/up.lock: two ``up`` on one data dir would run two clusters on one state."""
    with open(data_dir / "up.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpError(
                f"another `beanraft up` is running on {data_dir}: stop it first"
            ) from None
        yield


# --- the command ------------------------------------------------------------------------


class Up:
    """One run of ``beanraft up``; ``command`` is how children are started (``beanraft``)."""

    def __init__(self, args: argparse.Namespace, command: Sequence[str]) -> None:
        self.args = args
        self.command = list(command)
        self.data_dir: Path = args.data_dir
        self.supervisor = Supervisor(self.data_dir)
        self.signals = 0
        self.stop_requested = threading.Event()

    def say(self, line: str) -> None:
        self.supervisor.say("up", line)

    def run(self) -> int:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with data_dir_lock(self.data_dir):
                return self._run_locked()
        except (UpError, tls.TlsError) as exc:
            print(f"beanraft up: {exc}", file=sys.stderr)
            return 1

    def _run_locked(self) -> int:
        args = self.args
        if args.workers < 0:
            raise UpError(f"--workers must be 0 or more, got {args.workers}")
        state = resolve_state(self.data_dir, args.nodes, args.listen)
        resumed = load_state(self.data_dir) is not None
        check_ports_free(state)
        save_state(self.data_dir, state)
        for path in ensure_secrets(self.data_dir, state, args.insecure):
            self.say(f"created {path}")
        if args.insecure:
            self.say("WARNING: --insecure: gRPC without TLS or roles; anyone on this host can")
            self.say("WARNING: call the cluster. Use it for development only.")
        self._install_signal_handlers()
        specs = child_specs(state, self.data_dir, args.workers, args.insecure, self.command)
        verb = "resuming" if resumed else "starting"
        self.say(f"{verb} a {len(state.nodes)}-node cluster in {self.data_dir}")
        try:
            self._start(specs, state)
        except (ChildDied, TimeoutError, _Interrupted) as exc:
            self.say(f"start failed: {exc}" if not isinstance(exc, _Interrupted) else "stopping")
            self._stop()
            return 0 if isinstance(exc, _Interrupted) else 1
        config = client_config.write(
            [n.grpc_addr for n in state.nodes],
            None if args.insecure else self.data_dir / "tls",
            log_dir=self.data_dir / "logs" if args.workers else None,
        )
        self.say(
            f"wrote {config}: `beanraft job`, `cluster`, `logs` and `stop` find this cluster there"
        )
        self._print_summary(state)
        return self._serve()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signals += 1
            self.stop_requested.set()
            if self.signals > 1:
                self.supervisor.kill_all()  # signals only: the main thread does the waiting

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def _start(self, specs: list[ChildSpec], state: UpState) -> None:
        timeout_s = self.args.start_timeout
        for spec in specs:
            if self.stop_requested.is_set():
                raise _Interrupted()
            child = self.supervisor.start(spec)
            self.say(f"started {spec.name} (pid {child.process.pid})")
            if spec.name.startswith("node-"):
                node = next(n for n in state.nodes if f"node-{n.node_id}" == spec.name)
                self._wait(f"{spec.name}'s gRPC port {node.grpc_addr}", node.grpc_addr, timeout_s)
            if spec.name == f"node-{state.nodes[-1].node_id}":
                self._wait_for_listeners(state, timeout_s)
        self.supervisor.check_alive()

    def _wait_for_listeners(self, state: UpState, timeout_s: float) -> None:
        """Every node is started: wait until each one's listener answers, which takes a
        leader, before a worker (or the banner) sends anyone there."""
        self.say(f"waiting for {client_addr(state.listen)} and the other listeners to answer")
        for node in state.nodes:
            addr = client_addr(node.beanstalkd_addr)

            def answers(addr: str = addr) -> bool:
                return beanstalkd_answers(addr)

            self._wait_for(f"node-{node.node_id}'s listener {addr}", answers, timeout_s)

    def _wait(self, what: str, addr: str, timeout_s: float) -> None:
        self._wait_for(what, lambda: tcp_accepts(addr), timeout_s)

    def _wait_for(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        def ready_or_stop() -> bool:
            if self.stop_requested.is_set():
                raise _Interrupted()
            return ready()

        self.supervisor.wait_until(what, ready_or_stop, timeout_s, self.say)

    def _serve(self) -> int:
        """Supervise until asked to stop: a child that dies is started again after a back-off
        (1, 2, 4 ... 30 s; reset once it has run for a minute), unless its exit says that
        starting it again cannot help (its data or its flags were refused)."""
        failed = False
        restarts = _Restarts()
        while not self.stop_requested.wait(0.5):
            for child, code in self.supervisor.dead_children():
                failed = True
                self._on_death(child, code, restarts)
            for spec in restarts.due(time.monotonic()):
                child = self.supervisor.start(spec)
                self.say(f"restarted {spec.name} (pid {child.process.pid})")
            alive = [c for c in self.supervisor.children if c.process.poll() is None]
            if not alive and not restarts.pending:
                self.say("every child has exited: stopping")
                return 1
        self.say("stopping (Ctrl-C again to kill at once)")
        self._stop()
        return 1 if failed else 0

    def _on_death(self, child: Child, code: int, restarts: _Restarts) -> None:
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if code in NOT_RESTARTED:
            self.say(
                f"{child.name} exited unexpectedly ({how}): {NOT_RESTARTED[code]}; not restarting "
                f"it, the others keep running (its log: {self.data_dir / (child.name + '.log')})"
            )
            return
        delay_s = restarts.schedule(child.spec, time.monotonic())
        self.say(
            f"{child.name} exited unexpectedly ({how}); the others keep running; restarting it "
            f"in {delay_s:g} s"
        )

    def _stop(self) -> None:
        for group in (["worker"], [c.name for c in self.supervisor.children]):
            self.supervisor.stop(group, STOP_TIMEOUT_S)
        self.say(f"stopped; run the same command again to resume from {self.data_dir}")

    def _print_summary(self, state: UpState) -> None:
        for line in summary(state, self.data_dir, self.args.workers, self.args.insecure):
            self.say(line)


def summary(state: UpState, data_dir: Path, workers: int, insecure: bool) -> list[str]:
    """What listens where, and commands to try."""
    beanstalkd = client_addr(state.listen)
    host, port = split_addr(beanstalkd)
    pool = f"a worker pool of {workers}" if workers else "no worker pool (add --workers 2)"
    others = ", ".join(n.beanstalkd_addr for n in state.nodes[1:])
    lines = [
        f"beanraft is up: {len(state.nodes)} nodes serving the beanstalkd protocol, {pool}",
        f"  beanstalkd protocol  {state.listen}  <- point any beanstalkd client here",
    ]
    if others:
        lines.append(f"  {'':<20} (every node serves it; the others: {others})")
    for n in state.nodes:
        lines.append(
            f"  node {n.node_id:<15} gRPC {n.grpc_addr}  Raft {n.raft_addr}  "
            f"data {data_dir / ('node-' + n.node_id)}"
        )
        if n.metrics_addr:
            lines.append(f"  {'':<20} metrics http://{n.metrics_addr}/metrics")
    if not insecure:
        lines.append(f"  certificates         {data_dir / 'tls'} (admin, viewer, proxy, worker)")
    # Commands that work as printed: this very interpreter (it has greenstalk), beanraft by
    # the name the shell knows, and a tube of its own (the worker pool watches "default" and
    # would take a body that is not a job spec, and bury it).
    python = sys.executable
    beanraft = "beanraft" if shutil.which("beanraft") else f"{python} -m beanraft"
    lines += [
        f"  logs                 {data_dir}/<name>.log",
        "try:",
        f"  {python} -c \"import greenstalk; c = greenstalk.Client(('{host}', {port}), "
        "use='hello', watch='hello'); print(c.put('hello')); job = c.reserve(); "
        'print(job.id, job.body); c.delete(job)"',
        f"  {beanraft} cluster status",
    ]
    if workers:
        lines.append(f"  {beanraft} job run -- echo hello     # then: {beanraft} job status ID")
        lines.append(f"  {beanraft} submit --beanstalkd {beanstalkd} -- echo hello")
        lines.append(f"  {beanraft} logs JOB_ID       # on this host; or `{beanraft} job log ID`")
    lines.append("stop with Ctrl-C; run the same command again to resume")
    return lines


# Exit codes after which starting the same command again cannot help.
NOT_RESTARTED = {
    2: "its flags or configuration were refused",
    3: "its data directory failed its checks (see the node's log for what to do)",
}
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 60.0  # a child that ran this long starts its back-off afresh


class _Restarts:
    """Which children to start again, and when."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[float, ChildSpec]] = {}
        self._count: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def schedule(self, spec: ChildSpec, now: float) -> float:
        if now - self._started.get(spec.name, now) >= STABLE_AFTER_S:
            self._count[spec.name] = 0
        count = self._count.get(spec.name, 0)
        delay_s = RESTART_BACKOFF_S[min(count, len(RESTART_BACKOFF_S) - 1)]
        self._count[spec.name] = count + 1
        self.pending[spec.name] = (now + delay_s, spec)
        return delay_s

    def due(self, now: float) -> list[ChildSpec]:
        ready = [spec for at, spec in self.pending.values() if at <= now]
        for spec in ready:
            del self.pending[spec.name]
            self._started[spec.name] = now
        return ready


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while starting."""
