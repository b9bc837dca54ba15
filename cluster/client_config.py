"""Where the command-line clients (``beanraft job``, ``beanraft cluster``) find the cluster and
their certificate when no flag names them.

Order, first found wins, each part on its own:
1. flags: ``--cluster A,B,C``, ``--tls-dir DIR`` or ``--insecure``;
2. environment: ``BEANRAFT_CLUSTER``, ``BEANRAFT_TLS_DIR``, ``BEANRAFT_INSECURE=1``;
3. the client file: ``$BEANRAFT_CONFIG``, else ``$XDG_CONFIG_HOME/beanraft/client.json`` (by
   default ``~/.config/beanraft/client.json``), which ``beanraft up`` writes for the cluster it
   starts: ``{"cluster": ["127.0.0.1:PORT", ...], "tls_dir": "/path/data/tls"}`` (or
   ``"insecure": true``), and ``"log_dir"``, where its worker pool keeps job logs (the
   default ``--log-dir`` of ``beanraft logs`` and ``beanraft stop`` after ``$BEANRAFT_LOG_DIR``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from jobqueue.errors import BeanraftError


class ClientConfigError(BeanraftError):
    """No cluster is named anywhere, or the client file is unreadable; says what to do."""


@dataclass(frozen=True)
class ClientConfig:
    addresses: tuple[str, ...]
    tls_dir: Path | None  # None: plaintext (insecure)


def config_path() -> Path:
    explicit = os.environ.get("BEANRAFT_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "beanraft" / "client.json"


def write(
    addresses: list[str],
    tls_dir: Path | None,
    path: Path | None = None,
    log_dir: Path | None = None,
) -> Path:
    """Record a cluster for the clients (``beanraft up`` does, for the cluster it runs), and
    where its worker pool keeps job logs (for ``beanraft logs`` and ``beanraft stop``)."""
    target = path or config_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, object] = {"cluster": addresses}
    if log_dir is not None:
        content["log_dir"] = str(log_dir.resolve())
    if tls_dir is None:
        content["insecure"] = True
    else:
        content["tls_dir"] = str(tls_dir.resolve())
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def resolve(cluster: str = "", tls_dir: Path | None = None, insecure: bool = False) -> ClientConfig:
    """The cluster and certificate directory from flags, then environment, then the file."""
    file = _read_file()
    addresses = _split(cluster) or _split(os.environ.get("BEANRAFT_CLUSTER", ""))
    listed = file.get("cluster", [])
    addresses = addresses or tuple(str(a) for a in (listed if isinstance(listed, list) else []))
    if not addresses:
        raise ClientConfigError(
            "no cluster given: pass --cluster HOST:PORT,... or set BEANRAFT_CLUSTER, or start "
            f"one with `beanraft up` (it writes {config_path()})"
        )
    if insecure or os.environ.get("BEANRAFT_INSECURE") == "1":
        return ClientConfig(addresses, None)
    directory = tls_dir or _path(os.environ.get("BEANRAFT_TLS_DIR", ""))
    if directory is None and file.get("insecure") is True and not cluster:
        return ClientConfig(addresses, None)
    directory = directory or _path(str(file.get("tls_dir", "")))
    if directory is None:
        raise ClientConfigError(
            "no certificate directory: pass --tls-dir DIR (with ca.crt and admin.crt) or "
            "--insecure, or set BEANRAFT_TLS_DIR"
        )
    return ClientConfig(addresses, directory)


def log_dir() -> str | None:
    """The job log directory the client file names, or None (no file, or no worker pool)."""
    try:
        value = _read_file().get("log_dir")
    except ClientConfigError:
        return None
    return value if isinstance(value, str) and value else None


def _read_file() -> dict[str, object]:
    path = config_path()
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ClientConfigError(f"{path}: cannot read it ({exc}); fix or remove it") from None
    if not isinstance(content, dict):
        raise ClientConfigError(f"{path}: expected a JSON object; fix or remove it")
    return content


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _path(text: str) -> Path | None:
    return Path(text) if text else None
