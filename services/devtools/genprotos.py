"""Regenerate `gen/` (the Python package `eventfn_api`: messages, gRPC stubs, typing stubs)
from `protos/`, with the same command integrators use: `buf generate --template
clients/python/buf.gen.yaml` (see clients/README.md).

`make gen` runs this; `tests/devtools/test_gen_current.py` runs `generate()` into a temporary
directory and fails when the result differs from the checked-in `gen/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
PACKAGE = "eventfn_api"
TEMPLATE = ROOT / "clients" / "python" / "buf.gen.yaml"


def proto_files(protos: Path = PROTOS) -> list[Path]:
    """List the proto files of the tree, sorted so output is reproducible."""
    return sorted(protos.rglob("*.proto"))


def buf() -> str:
    """Return the buf executable installed by `npm ci` (package.json)."""
    local = ROOT / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    if found is None:
        raise SystemExit("buf is not installed: run `make install` (npm ci)")
    return found


def generate(out: Path) -> None:
    """Write the generated package into `out` (as `out/eventfn_api/...`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [buf(), "generate", "--template", str(TEMPLATE.relative_to(ROOT)), "-o", tmp],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / "gen" / PACKAGE, out / PACKAGE, dirs_exist_ok=True)


def main() -> None:
    """Replace `gen/` with freshly generated code."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if GEN.exists():
            shutil.rmtree(GEN)
        shutil.copytree(tmp, GEN)
    print(f"generated {len(proto_files())} proto files into {GEN / PACKAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
