"""One Unix user per node, so that iptables can tell the nodes' packets apart on loopback."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GROUP = "brnem"
USER_PREFIX = "brnem"


@dataclass(frozen=True)
class NodeUser:
    name: str
    uid: int
    gid: int


def ensure_users(count: int) -> list[NodeUser]:
    """Users brnem1..brnemN in group brnem (created once, kept: they own no files after a run)."""
    try:
        gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
        gid = grp.getgrnam(GROUP).gr_gid
    users = []
    for i in range(1, count + 1):
        name = f"{USER_PREFIX}{i}"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 "--gid", GROUP, name],
                check=True,
            )  # fmt: skip
            entry = pwd.getpwnam(name)
        users.append(NodeUser(name, entry.pw_uid, gid))
    return users


class Traversal:
    """Lets other users reach the interpreter: adds search permission for others to each
    directory on its path that lacks it (typically /root, under which pyenv lives), and puts
    every mode back on ``restore``."""

    def __init__(self) -> None:
        self._changed: list[tuple[Path, int]] = []

    def grant_for(self, path: Path) -> None:
        for directory in [*reversed(path.parents)]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                self._changed.append((directory, stat.S_IMODE(mode)))
                os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH)

    def restore(self) -> None:
        while self._changed:
            directory, mode = self._changed.pop()
            os.chmod(directory, mode)


def interpreter() -> Path:
    """The real file of this interpreter (a venv's python is a link to it)."""
    return Path(os.path.realpath(sys.executable))


def give(path: Path, user: NodeUser, mode: int = 0o700) -> None:
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
