"""Regenerate the Python code for the ``coolbeans.api.v1`` and ``joblet`` protos
(``python -m api.generate``).

Runs grpc_tools.protoc with mypy-protobuf over ``api/*.proto`` and rewrites protoc's top-level
imports (``import empty_pb2``) into package imports (``from api import empty_pb2``), because
the .proto files import each other by bare name, as coolbeans' do, and the wire does not care.
``--check`` regenerates into a temporary directory and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
PROTOS = (
    "empty.proto",
    "job.proto",
    "client.proto",
    "cluster.proto",
    "jsm.proto",
    "joblet.proto",
    "workerlogs.proto",
)
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
_BARE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def _protoc(out_dir: Path) -> None:
    from grpc_tools import protoc  # imported here: only needed when generating

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{API_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(API_DIR / name) for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see its message above")


def _plugin(name: str) -> Path:
    # mypy-protobuf's plugins sit beside the interpreter in a virtualenv; fall back to PATH.
    beside = Path(sys.executable).parent / name
    found = shutil.which(name)
    if beside.exists():
        return beside
    if found:
        return Path(found)
    raise SystemExit(f"{name} not found: pip install mypy-protobuf (the dev extra)")


def _rewrite_imports(text: str) -> str:
    return _BARE_IMPORT.sub(lambda m: f"from api import {m.group(1)}{m.group(2) or ''}", text)


def generated_files(out_dir: Path) -> dict[str, str]:
    """Generate into ``out_dir`` and return {file name: rewritten text}."""
    _protoc(out_dir)
    files = {}
    for path in sorted(out_dir.iterdir()):
        if path.name.endswith(SUFFIXES):
            files[path.name] = _rewrite_imports(path.read_text())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = generated_files(Path(tmp))
    stale = [name for name, text in files.items() if _read(API_DIR / name) != text]
    if args.check:
        if stale:
            print(f"stale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    for name in stale:
        (API_DIR / name).write_text(files[name])
    print(f"regenerated {len(stale)} file(s)")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())
