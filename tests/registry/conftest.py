"""A real registry on a fresh database, reached through the generated stubs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import orjson
import pytest

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.registry.app import start_registry
from services.registry.settings import RegistrySettings

BOOTSTRAP = "efn_bootstrap-test-token-0123456789"
SERVICE = "svc-test-token-0123456789"

HANDLER = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint, { method: 'POST', body: JSON.stringify(event) })
}
"""
SETTINGS = [
    types_pb2.SettingDefinition(
        label="Endpoint", name="endpoint", type=types_pb2.SETTING_TYPE_STRING, required=True
    ),
    types_pb2.SettingDefinition(
        label="API Key",
        name="apiKey",
        type=types_pb2.SETTING_TYPE_STRING,
        required=True,
        encrypted=True,
    ),
]


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """Build call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Registry:
    """A running registry with a stub and the deployment's tokens."""

    stub: registry_pb2_grpc.RegistryStub
    port: int
    database_url: str
    state_dir: Path

    async def workspace(self, name: str) -> tuple[str, str]:
        """Create a workspace as the bootstrap admin; return (workspace id, owner token)."""
        resp = await self.stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name=name)),
            metadata=auth(BOOTSTRAP),
        )
        return resp.workspace.name.split("/")[1], resp.token

    async def member(self, owner: str, email: str, *grants: res.RoleGrant) -> str:
        """Create a member with roles; return a token for it."""
        me = await self.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(owner))
        created = await self.stub.CreateMember(
            pb.CreateMemberRequest(
                parent=me.workspace.name, member=res.Member(email=email, roles=list(grants))
            ),
            metadata=auth(owner),
        )
        tok = await self.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=me.workspace.name,
                token=res.Token(member=created.member.name, display_name="t"),
            ),
            metadata=auth(owner),
        )
        return tok.secret


def ws(workspace_id: str) -> str:
    """Return a workspace's name."""
    return f"workspaces/{workspace_id}"


@asynccontextmanager
async def running_registry(
    database_url: str, state_dir: Path, **settings: Any
) -> AsyncIterator[Registry]:
    """Run a registry on `database_url` and an ephemeral port (settings: overrides)."""
    config = RegistrySettings(
        **{
            "database_url": database_url,
            "registry_listen": "127.0.0.1:0",
            "state_dir": state_dir,
            "bootstrap_token": BOOTSTRAP,
            "service_token": SERVICE,
            **settings,
        }
    )
    async with AsyncExitStack() as stack:
        running = await start_registry(config, stack)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        stack.push_async_callback(channel.close)
        yield Registry(
            stub=registry_pb2_grpc.RegistryStub(channel),
            port=running.port,
            database_url=database_url,
            state_dir=state_dir,
        )


@pytest.fixture
async def registry(fresh_database: str, tmp_path: Path) -> AsyncIterator[Registry]:
    """Start a registry on a fresh database and an ephemeral port."""
    logging.getLogger("services").setLevel(logging.DEBUG)
    async with running_registry(fresh_database, tmp_path) as running:
        yield running


@dataclass
class SourceRef:
    """A source made for a test: its id (for subjects and watchers), name and write key."""

    id: str
    name: str
    write_key: str


async def make_source(r: Registry, token: str, display_name: str) -> SourceRef:
    """Create a source in the token's workspace."""
    me = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))
    made = await r.stub.CreateSource(
        pb.CreateSourceRequest(
            parent=me.workspace.name, source=res.Source(display_name=display_name)
        ),
        metadata=auth(token),
    )
    return SourceRef(made.source.name.rsplit("/", 1)[-1], made.source.name, made.source.write_key)


async def store_setting_by_hand(
    database_url: str, instance_id: str, name: str, value: object
) -> None:
    """Write a setting's stored value straight into PostgreSQL, as no API call would."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE instance SET settings = jsonb_set(settings, ARRAY[$1], $2::jsonb) "
            "WHERE id = $3",
            name,
            orjson.dumps(value).decode(),
            instance_id,
        )
    finally:
        await conn.close()
