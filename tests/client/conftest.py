"""Generated clients against the real services: a registry on a fresh database and a router
on the session NATS, with a workspace, a source and two functions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.router.app import start_router
from services.router.settings import RouterSettings
from tests.registry.conftest import (
    HANDLER,
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    make_source,
    registry,
)

__all__ = ["registry"]

ROOT = Path(__file__).resolve().parents[2]
# What an integrating team copies: the protos, the vendored googleapis protos, buf.yaml and
# the generation templates (clients/). Nothing generated comes along.
CHECKOUT = ["protos", "third_party", "buf.yaml", "clients"]


@dataclass
class Services:
    """Where the services listen, an owner token, and what the workspace holds."""

    registry_addr: str
    router_addr: str
    token: str
    write_key: str
    function_names: list[str]


@pytest.fixture
async def services(registry: Registry, nats_url: str) -> AsyncIterator[Services]:
    """Start a router next to the registry; make a source and two functions."""
    ws_id, owner = await registry.workspace(f"Clients {uuid.uuid4().hex[:6]}")
    md = auth(owner)
    source = await make_source(registry, owner, "web")
    names = ["Webhook", "Mixpanel"]
    for name in names:
        await registry.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=f"workspaces/{ws_id}",
                function=res.DestinationFunction(display_name=name),
                code=HANDLER,
                settings=SETTINGS,
            ),
            metadata=md,
        )
    async with AsyncExitStack() as stack:
        router = await start_router(
            RouterSettings(
                router_listen="127.0.0.1:0",
                router_http_listen="127.0.0.1:0",
                nats_url=nats_url,
                registry_addr=f"127.0.0.1:{registry.port}",
                service_token=SERVICE,
                database_url=registry.database_url,
            ),
            stack,
        )
        await router.watcher.wait_until(lambda v: source.id in v.sources)
        yield Services(
            registry_addr=f"127.0.0.1:{registry.port}",
            router_addr=f"127.0.0.1:{router.grpc_port}",
            token=owner,
            write_key=source.write_key,
            function_names=names,
        )


def clean_checkout(target: Path) -> Path:
    """Copy what an integrating team has into `target`, with the repository's node_modules
    (installed by `make install` from package.json) linked in."""
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("gen", "node_modules")
            )
        else:
            shutil.copy(source, target / name)
    (target / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    return target


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run a documented command; fail the test with its output when it fails."""
    done = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean copy of the files integrators generate clients from."""
    yield clean_checkout(tmp_path_factory.mktemp("checkout"))


def python_path_first() -> dict[str, str]:
    """PATH with this Python first: the Python plugin runs on `python3` from PATH."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
