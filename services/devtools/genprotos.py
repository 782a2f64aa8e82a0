"""Regenerate `gen/` (Python messages, gRPC stubs, typing stubs) from `protos/`.

`make gen` runs this; `tests/common/test_gen_current.py` runs `generate()` into a temporary
directory and fails when the result differs from the checked-in `gen/`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"


def proto_files(protos: Path = PROTOS) -> list[Path]:
    """List the proto files of the tree, sorted so output is reproducible."""
    return sorted(protos.rglob("*.proto"))


def generate(out: Path, protos: Path = PROTOS) -> None:
    """Write generated code for every proto under `protos` into `out`."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    files = [str(p.relative_to(protos)) for p in proto_files(protos)]
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{protos}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    for package in {p.parent for p in out.rglob("*_pb2.py")}:
        for directory in [package, *package.parents]:
            if directory == out or out not in directory.parents:
                break
            (directory / "__init__.py").touch()
        (package / "py.typed").touch()


def main() -> None:
    """Replace `gen/` with freshly generated code."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if GEN.exists():
            shutil.rmtree(GEN)
        shutil.copytree(tmp, GEN)
    print(f"generated {len(proto_files())} proto files into {GEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
