"""A Node client generated from protos/ at test time calls the real registry over HTTP/2 gRPC.

buf runs the local protoc-gen-es plugin (no remote plugins) on protos/ and on the standard
grpc.health.v1 proto kept in node/proto/; @connectrpc/connect-node's gRPC transport then calls
Health/Check and Registry.ListSources with a bearer token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from eventfn.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import Registry, auth

NODE_PROJECT = Path(__file__).parent / "node"
PROTOS = Path(__file__).parents[2] / "protos"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to generate and run the Node client",
)


def _install_node_project() -> Path:
    """Run `npm ci` in node/ unless its node_modules matches package-lock.json already."""
    modules = NODE_PROJECT / "node_modules"
    installed = modules / ".package-lock.json"  # written by npm at the end of an install
    lock = NODE_PROJECT / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_PROJECT,
            check=True,
            timeout=300,
        )
    return modules


@pytest.fixture(scope="session")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate the Node stubs into a temporary project and return its directory."""
    modules = _install_node_project()
    out = tmp_path_factory.mktemp("node-client")
    template = {
        "version": "v2",
        "plugins": [
            {
                "local": str(modules / ".bin" / "protoc-gen-es"),
                "out": str(out / "gen"),
                "opt": ["target=js", "import_extension=js"],
            }
        ],
        "inputs": [{"directory": str(PROTOS)}, {"directory": str(NODE_PROJECT / "proto")}],
    }
    subprocess.run(
        [str(modules / ".bin" / "buf"), "generate", "--template", json.dumps(template)],
        cwd=out,
        check=True,
        timeout=120,
    )
    assert (out / "gen" / "eventfn" / "registry" / "v1" / "registry_pb.js").exists()
    (out / "package.json").write_text('{"type": "module"}\n')
    (out / "node_modules").symlink_to(modules, target_is_directory=True)
    shutil.copy(NODE_PROJECT / "call_registry.mjs", out)
    return out


async def test_generated_node_client_calls_health_and_list_sources(
    registry: Registry, node_client: Path
) -> None:
    ws_id, owner = await registry.workspace("Node")
    mine = await registry.stub.CreateSource(
        pb.CreateSourceRequest(name="From Python"), metadata=auth(owner)
    )
    _, other = await registry.workspace("Elsewhere")
    await registry.stub.CreateSource(pb.CreateSourceRequest(name="Hidden"), metadata=auth(other))

    proc = await asyncio.create_subprocess_exec(
        "node",
        "call_registry.mjs",
        f"127.0.0.1:{registry.port}",
        cwd=node_client,
        env={**os.environ, "REGISTRY_TOKEN": owner},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout) == {
        "health": "SERVING",
        "sources": [{"id": mine.source.id, "name": "From Python", "workspaceId": ws_id}],
        "anonymous": "Unauthenticated",
    }
