"""Clients generated from a clean checkout with the documented commands (clients/README.md)
call the real services (issue 13, item 1).

Python: `buf generate --template clients/python/buf.gen.yaml` (the grpc_tools-based local
plugin) -> package `eventfn_api`, run from its own directory in a subprocess.
TypeScript: `buf generate --template clients/typescript/buf.gen.yaml` (protoc-gen-es from npm),
type-checked by `tsc --strict`, run by node with @connectrpc/connect-node.
Go: `buf generate --template clients/go/buf.gen.yaml` with Debian's protoc-gen-go and
protoc-gen-go-grpc, compiled by `go build` against Debian's Go packages (see go/).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.client.conftest import Services, python_path_first, run

HERE = Path(__file__).parent
BUF = "node_modules/.bin/buf"


@pytest.fixture(scope="session")
def python_client(checkout: Path) -> Path:
    """Generate the Python client in the clean checkout; return its gen/ directory."""
    run(
        [BUF, "generate", "--template", "clients/python/buf.gen.yaml"],
        checkout,
        python_path_first(),
    )
    gen = checkout / "gen"
    assert (gen / "eventfn_api" / "registry" / "v1" / "registry_pb2_grpc.py").exists()
    assert not (gen / "eventfn").exists(), "no top-level `eventfn` package may be generated"
    return gen


@pytest.fixture(scope="session")
def typescript_client(checkout: Path) -> Path:
    """Generate the TypeScript client, add the program, type-check and compile it strictly."""
    if shutil.which("node") is None:
        pytest.skip("node is needed for the TypeScript client")
    run([BUF, "generate", "--template", "clients/typescript/buf.gen.yaml"], checkout)
    project = checkout / "clients" / "typescript"
    assert (project / "gen" / "eventfn" / "registry" / "v1" / "registry_pb.ts").exists()
    shutil.copy(HERE / "typescript" / "call_platform.ts", project)
    shutil.copy(HERE / "typescript" / "tsconfig.json", project)
    (project / "package.json").write_text('{"type": "module"}\n')
    run(["../../node_modules/.bin/tsc", "-p", "tsconfig.json"], project)  # strict: tsconfig
    return project


async def run_program(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    import os

    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_generated_python_client_lists_functions_and_ingests(
    services: Services, python_client: Path
) -> None:
    out = await run_program(
        [
            sys.executable,
            str(HERE / "python" / "call_platform.py"),
            services.registry_addr,
            services.router_addr,
        ],
        cwd=python_client,
        env={
            "PYTHONPATH": str(python_client),
            "EVENTFN_TOKEN": services.token,
            "WRITE_KEY": services.write_key,
        },
    )
    assert Path(out["package"]).is_relative_to(python_client), "the generated package was used"
    assert out["functions"] == services.function_names
    assert out["violations"] == ["name"]
    assert "eventfn.registry.v1.Registry" in out["reflection_v1"]
    assert out["accepted"] == 2 and out["message_ids"] == 2


async def test_generated_typescript_client_lists_functions_and_ingests(
    services: Services, typescript_client: Path
) -> None:
    out = await run_program(
        ["node", "dist/call_platform.js", services.registry_addr, services.router_addr],
        cwd=typescript_client,
        env={"EVENTFN_TOKEN": services.token, "WRITE_KEY": services.write_key},
    )
    assert out == {
        "functions": services.function_names,
        "code": "InvalidArgument",
        "violations": ["name"],
        "accepted": 2,
        "messageIds": 2,
    }


GO_TOOLS = ("go", "protoc-gen-go", "protoc-gen-go-grpc")
# Debian's Go packages the generated code builds against (installed by `make test`, like
# Chromium): no other registry serves Go modules to this project's machines.
DEBIAN_GOPATH = Path("/usr/share/gocode")


@pytest.fixture(scope="session")
def go_client(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate the Go client, add the program, and build everything with `go build`."""
    missing = [t for t in GO_TOOLS if shutil.which(t) is None]
    if missing or not (DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc").exists():
        pytest.skip(f"Go toolchain or Debian's Go packages missing ({missing}): `make test`")
    run([BUF, "generate", "--template", "clients/go/buf.gen.yaml"], checkout)
    module = checkout / "clients" / "go"
    assert (module / "eventfn" / "registry" / "v1" / "registry_grpc.pb.go").exists()
    (module / "cmd" / "call-platform").mkdir(parents=True)
    shutil.copy(HERE / "go" / "main.go", module / "cmd" / "call-platform" / "main.go")
    gopath = tmp_path_factory.mktemp("gopath")
    (gopath / "src" / "eventfn.dev" / "client").mkdir(parents=True)
    (gopath / "src" / "eventfn.dev" / "client" / "go").symlink_to(module)
    env = {"GO111MODULE": "off", "GOPATH": f"{gopath}:{DEBIAN_GOPATH}", "GOFLAGS": ""}
    inside = gopath / "src" / "eventfn.dev" / "client" / "go"
    run(["go", "vet", "./..."], inside, env, timeout=600)
    run(["go", "build", "-o", str(module / "call-platform"), "./cmd/call-platform"], inside, env)
    return module


async def test_generated_go_client_builds_lists_functions_and_ingests(
    services: Services, go_client: Path
) -> None:
    out = await run_program(
        [str(go_client / "call-platform"), services.registry_addr, services.router_addr],
        cwd=go_client,
        env={"EVENTFN_TOKEN": services.token, "WRITE_KEY": services.write_key},
    )
    assert out == {"functions": services.function_names, "accepted": 2, "message_ids": 2}
