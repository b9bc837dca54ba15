"""A node's data on a small tmpfs that the harness can fill to the last byte, and free again."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


class SmallDisk:
    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
            check=True,
        )
        self._filler = path / ".filler"

    def fill(self) -> int:
        """Take every free byte (as root, so the reserve blocks root keeps goes too)."""
        written = 0
        size = 1 << 20
        fd = os.open(self._filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            while size:
                try:
                    written += os.write(fd, bytes(size))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)
