"""Cutting links between chosen nodes on 127.0.0.1 with iptables owner rules.

Every node is its own Unix user (``hosts``). A packet a node sends can be matched by its owner,
but a packet it receives cannot, and one TCP connection carries both directions. So each new
connection is marked, in the mangle table, with the user that opened it (CONNMARK), and cutting
the link between nodes A and B drops, in OUTPUT on ``lo``:

- what A sends to B's ports (Raft and gRPC), and what B sends to A's;
- what A sends on a connection B opened, and what B sends on one A opened (the replies, and
  the kernel's acknowledgements, which belong to the socket and so to its owner).

Nothing else is touched: other users' traffic (the proxies and the workload, run as root) and
other pairs' links flow as before. ``heal`` flushes the cuts; ``close`` removes every rule and
chain this made.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

MARK_CHAIN = "BRNEM_MARK"
CUT_CHAIN = "BRNEM_CUT"
MARK_BASE = 0x4E00


@dataclass(frozen=True)
class Endpoint:
    """A node as the firewall sees it: its user, the mark of connections it opens, its ports."""

    uid: int
    mark: int
    ports: tuple[int, ...]


def _iptables(*args: str, table: str = "filter", check: bool = True) -> bool:
    result = subprocess.run(
        ["iptables", "-w", "-t", table, *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables -t {table} {' '.join(args)}: {result.stderr.strip()}")
    return result.returncode == 0


class Firewall:
    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        for table, chain in (("mangle", MARK_CHAIN), ("filter", CUT_CHAIN)):
            _iptables("-N", chain, table=table, check=False)
            _iptables("-F", chain, table=table)
            if not _iptables("-C", "OUTPUT", "-o", "lo", "-j", chain, table=table, check=False):
                _iptables("-I", "OUTPUT", "-o", "lo", "-j", chain, table=table)
        self.cuts: set[frozenset[str]] = set()

    def add(self, name: str, uid: int, ports: tuple[int, ...]) -> Endpoint:
        endpoint = Endpoint(uid, MARK_BASE + len(self.endpoints) + 1, ports)
        self.endpoints[name] = endpoint
        _iptables(
            "-A", MARK_CHAIN, "-m", "owner", "--uid-owner", str(uid),
            "-m", "conntrack", "--ctstate", "NEW",
            "-j", "CONNMARK", "--set-mark", hex(endpoint.mark),
            table="mangle",
        )  # fmt: skip
        return endpoint

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between nodes ``a`` and ``b``, both ways."""
        if frozenset((a, b)) in self.cuts:
            return
        self.cuts.add(frozenset((a, b)))
        for src, dst in ((a, b), (b, a)):
            me, other = self.endpoints[src], self.endpoints[dst]
            owner = ["-m", "owner", "--uid-owner", str(me.uid)]
            ports = ",".join(str(p) for p in other.ports)
            _iptables("-A", CUT_CHAIN, "-p", "tcp", *owner, "-m", "multiport", "--dports",
                      ports, "-j", "DROP")  # fmt: skip
            _iptables("-A", CUT_CHAIN, *owner, "-m", "connmark", "--mark", hex(other.mark),
                      "-j", "DROP")  # fmt: skip

    def isolate(self, name: str) -> None:
        for other in self.endpoints:
            if other != name:
                self.cut(name, other)

    def split(self, side: list[str]) -> None:
        """Cut every link between ``side`` and the other nodes."""
        for a in side:
            for b in self.endpoints:
                if b not in side:
                    self.cut(a, b)

    def heal(self) -> None:
        _iptables("-F", CUT_CHAIN)
        self.cuts.clear()

    def dropped_packets(self) -> int:
        """Packets the cuts dropped so far (a check that a partition really held)."""
        out = subprocess.run(
            ["iptables", "-w", "-L", CUT_CHAIN, "-n", "-v", "-x"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        total = 0
        for line in out.splitlines()[2:]:
            fields = line.split()
            if fields and fields[0].isdigit():
                total += int(fields[0])
        return total

    def close(self) -> None:
        for table, chain in (("mangle", MARK_CHAIN), ("filter", CUT_CHAIN)):
            while _iptables("-D", "OUTPUT", "-o", "lo", "-j", chain, table=table, check=False):
                pass
            _iptables("-F", chain, table=table, check=False)
            _iptables("-X", chain, table=table, check=False)
