"""A stand-in for ``python -m beanraft`` in the orchestration tests of ``beanraft up``: it takes
the same subcommands and flags, listens where the real one would, and answers just enough
(a node accepts TCP on its gRPC address, and after a moment answers ``stats`` with OK on its
beanstalkd address, as a real one does once a leader is elected), so ``up``'s
start, readiness, output, resume and shutdown are tested without the cluster.

A node exits at start with code 3 when ``<data dir>/../fail-<name>`` exists."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path


def _listen(addr: str, answer: bytes | None) -> None:
    host, port = addr.rsplit(":", 1)
    server = socket.create_server((host, int(port)))

    def serve(conn: socket.socket) -> None:
        with conn:
            while answer is not None and conn.recv(1024):
                conn.sendall(answer)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("subcommand")
    for flag in ("--node-id", "--data-dir", "--raft-addr", "--grpc-addr", "--metrics-addr"):
        parser.add_argument(flag)
    for flag in ("--peers", "--tls-dir", "--beanstalkd-listen"):
        parser.add_argument(flag)
    for flag in ("--cluster-secret-file", "--listen", "--cluster", "--beanstalkd", "--log-dir"):
        parser.add_argument(flag)
    parser.add_argument("--concurrency")
    parser.add_argument("--insecure", action="store_true")
    args = parser.parse_args()
    if args.subcommand == "node":
        data_dir = Path(args.data_dir)
        if (data_dir.parent / f"fail-node-{args.node_id}").exists():
            print(f"boom: node {args.node_id} cannot start", flush=True)
            return 3
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(data_dir / "starts", "a") as starts:
            starts.write(f"{args.raft_addr} {args.grpc_addr}\n")
        print(f"node {args.node_id} serving gRPC on {args.grpc_addr}", flush=True)
        threading.Thread(target=_listen, args=(args.grpc_addr, None), daemon=True).start()
        time.sleep(0.5)  # no leader at once: up must wait for the listener to answer
        print(f"node {args.node_id} beanstalkd on {args.beanstalkd_listen}", flush=True)
        answer = b"OK 5\r\nhello\r\n"
        threading.Thread(target=_listen, args=(args.beanstalkd_listen, answer), daemon=True).start()
    else:
        print(f"worker for {args.beanstalkd} x{args.concurrency}", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
