"""A raw-socket client for conversations: send bytes, expect exact bytes."""

from __future__ import annotations

import re
import socket
import time

READ_TIMEOUT_S = 10.0


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=READ_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    @classmethod
    def unix(cls, path: str) -> Client:
        """A client on a UNIX socket (beanstalkd's ``-l unix:PATH``)."""
        client = cls.__new__(cls)
        client.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.sock.settimeout(READ_TIMEOUT_S)
        client.sock.connect(path)
        client._buf = b""
        return client

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout_s: float = READ_TIMEOUT_S) -> bool:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionError(f"connection closed; unread: {self._buf!r}")
        self._buf += data
        return True

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise TimeoutError(f"wanted {n} bytes, have {self._buf!r}")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise TimeoutError(f"no line; have {self._buf!r}")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def expect(self, expected: bytes) -> None:
        got = self.read_exact(len(expected))
        assert got == expected, f"expected {expected!r}, got {got + self._buf[:80]!r}"

    def request(self, data: bytes, expected: bytes) -> None:
        self.send(data)
        self.expect(expected)

    def request_id(self, data: bytes, pattern: bytes = rb"INSERTED (\d+)\r\n") -> int:
        """Send, read one line matching ``pattern``, return its number."""
        self.send(data)
        line = self.read_line()
        match = re.fullmatch(pattern, line)
        assert match, f"{line!r} does not match {pattern!r}"
        return int(match.group(1))

    def put(self, body: bytes = b"x", pri: int = 0, delay: int = 0, ttr: int = 60) -> int:
        return self.request_id(b"put %d %d %d %d\r\n%s\r\n" % (pri, delay, ttr, len(body), body))

    def chunk(self, data: bytes, head: bytes = b"OK") -> bytes:
        """Send ``data``; expect ``HEAD <n>\\r\\n<n bytes>\\r\\n``; return the n bytes."""
        self.send(data)
        line = self.read_line()
        assert line.startswith(head + b" "), f"expected {head!r}..., got {line!r}"
        body = self.read_exact(int(line.split()[-1]) + 2)
        assert body.endswith(b"\r\n")
        return body[:-2]

    def yaml(self, data: bytes) -> dict[str, str]:
        body = self.chunk(data)
        assert body.startswith(b"---\n")
        pairs = (line.split(": ", 1) for line in body.decode()[4:].splitlines())
        return {key: value for key, value in pairs}

    def use_only(self, tube: str) -> None:
        """Use and watch ``tube`` alone (so tests can share a server)."""
        self.request(b"use %s\r\n" % tube.encode(), b"USING %s\r\n" % tube.encode())
        self.request(b"watch %s\r\n" % tube.encode(), b"WATCHING 2\r\n")
        self.request(b"ignore default\r\n", b"WATCHING 1\r\n")

    def expect_silence(self, within_s: float) -> None:
        """Nothing arrives within ``within_s``."""
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            assert not self._fill(left), f"unexpected {self._buf!r}"

    def expect_closed(self) -> None:
        self.sock.settimeout(READ_TIMEOUT_S)
        assert self.sock.recv(1) == b"", "connection still open"
