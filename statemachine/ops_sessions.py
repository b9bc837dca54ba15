"""Command handlers for connections, proxies and leases, and per-connection tube state.

Theory of operation: per-connection state (used tube, watch list, reservations, a waiting
reserve) is replicated, so Connect/Use/Watch/Ignore/Disconnect are commands like any other. A
proxy's lease (RenewLease) makes its clients disconnect when it runs out (see ``events``);
DropProxy disconnects them at once. A client that watches a tube while it waits is added to
that tube's waiters and matched at once, so no waiter ever has a ready job it could take.
"""

from __future__ import annotations

from statemachine import commands as c
from statemachine.limits import DEFAULT_TUBE, tube_name_error
from statemachine.replies import (
    ClientStates,
    InvalidArgument,
    NotIgnored,
    Ok,
    Reply,
    TubeList,
    UnknownClient,
    Using,
    Watching,
)
from statemachine.sessions import Client, remove_moving_last
from statemachine.state import State


def connect(state: State, cmd: c.Connect) -> Reply:
    """Idempotent: a known client stays as it is. A new one uses and watches default."""
    if not cmd.client_id:
        return InvalidArgument('client_id must not be empty ("" names the admin)')
    if cmd.lease_ms < 0:
        return InvalidArgument(f"lease_ms {cmd.lease_ms} must not be negative")
    if cmd.lease_ms:
        state.leases[cmd.proxy_id] = state.now_ms + cmd.lease_ms
    if cmd.client_id not in state.clients:
        default = state.tube_for(DEFAULT_TUBE)
        state.clients[cmd.client_id] = Client(cmd.client_id, cmd.proxy_id, default)
        default.using_count += 1
        default.watching_count += 1
        state.counters.total_connections += 1
    return Ok()


def disconnect(state: State, cmd: c.Disconnect) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is not None:
        state.disconnect(client)
    return Ok()


def renew_lease(state: State, cmd: c.RenewLease) -> Reply:
    if cmd.lease_ms < 0:
        return InvalidArgument(f"lease_ms {cmd.lease_ms} must not be negative")
    state.leases[cmd.proxy_id] = state.now_ms + cmd.lease_ms
    return Ok()


def drop_proxy(state: State, cmd: c.DropProxy) -> Reply:
    state.leases.pop(cmd.proxy_id, None)
    state.disconnect_proxy(cmd.proxy_id)
    return Ok()


def extend_leases(state: State, cmd: c.ExtendLeases) -> Reply:
    if cmd.until_ms < 0:
        return InvalidArgument(f"until_ms {cmd.until_ms} must not be negative")
    for proxy_id, expiry_ms in state.leases.items():
        if expiry_ms < cmd.until_ms:
            state.leases[proxy_id] = cmd.until_ms
    return Ok()


def tick(state: State, cmd: c.Tick) -> Reply:
    # The events due by now were processed before dispatch; a tick has nothing else to do.
    return Ok()


def use(state: State, cmd: c.Use) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    error = tube_name_error(cmd.tube)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_use += 1
    tube = state.tube_for(cmd.tube)
    old = client.used
    if tube is not old:
        tube.using_count += 1
        old.using_count -= 1
        client.used = tube
        state.free_if_unreferenced(old)
    return Using(tube.name)


def watch(state: State, cmd: c.Watch) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    error = tube_name_error(cmd.tube)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_watch += 1
    tube = state.tube_for(cmd.tube)
    if not client.watches(tube):
        client.watched.append(tube)
        client.watch_set.add(tube)
        tube.watching_count += 1
        if client.wait_seq:
            tube.add_waiter(client)
            state.dirty[tube.name] = tube
            state.match()
    return Watching(len(client.watched))


def ignore(state: State, cmd: c.Ignore) -> Reply:
    """Ignoring an unwatched tube changes nothing; the only watched tube is NOT_IGNORED."""
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    error = tube_name_error(cmd.tube)
    if error is not None:
        return InvalidArgument(error)
    state.counters.cmd_ignore += 1
    watched = client.watched
    index = next((i for i, t in enumerate(watched) if t.name == cmd.tube), None)
    if index is None:
        return Watching(len(watched))
    if len(watched) == 1:
        return NotIgnored()
    tube = watched[index]
    remove_moving_last(watched, index)
    client.watch_set.discard(tube)
    tube.watching_count -= 1
    if client.wait_seq:
        del tube.waiters[client.wait_seq]
    state.free_if_unreferenced(tube)
    return Watching(len(watched))


def list_tube_used(state: State, cmd: c.ListTubeUsed) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    state.counters.cmd_list_tube_used += 1
    return Using(client.used.name)


def list_tubes_watched(state: State, cmd: c.ListTubesWatched) -> Reply:
    client = state.clients.get(cmd.client_id)
    if client is None:
        return UnknownClient(cmd.client_id)
    state.counters.cmd_list_tubes_watched += 1
    return TubeList(tuple(tube.name for tube in client.watched))


def check_clients(state: State, cmd: c.CheckClients) -> Reply:
    """coolbeans' CheckClientState: a client of another proxy counts as missing."""
    waiting: list[str] = []
    not_waiting: list[str] = []
    missing: list[str] = []
    for client_id in cmd.client_ids:
        client = state.clients.get(client_id)
        if client is None or client.proxy_id != cmd.proxy_id:
            missing.append(client_id)
        elif client.wait_seq:
            waiting.append(client_id)
        else:
            not_waiting.append(client_id)
    return ClientStates(tuple(waiting), tuple(not_waiting), tuple(missing))
