"""The whole data path in one process: registry, router, executor, and a local HTTP sink
standing in for the third-party API that functions call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from aiohttp import web
from google.protobuf import duration_pb2, struct_pb2
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.devtools.embedded.nats import EmbeddedNats
from services.executor.app import RunningExecutor, start_executor
from services.executor.settings import ExecutorSettings
from services.router.app import RunningRouter, start_router
from services.router.settings import RouterSettings
from tests.registry.conftest import SERVICE, Registry, auth, registry

__all__ = ["registry"]

# The session's executors share one consumer: a pack one held when its test ended comes
# again after this (the default, 120 s, kept tests counting settled packs waiting that long).
# Held packs are marked in work every third of it, so no slow handler's pack comes twice.
SHARED_ACK_WAIT_SECONDS = 30.0


@dataclass
class Sink:
    """A real HTTP server on 127.0.0.1 that records every request body it gets."""

    url: str
    bodies: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # lower-case names
    peers: list[int] = field(default_factory=list)  # the client's port of each request
    status: int = 200
    delay: float = 0.0  # seconds each answer takes, to keep work in flight
    gate: asyncio.Event | None = None  # while set and not open: record, but do not answer
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        """Record a JSON body; answer with the configured status."""
        body = orjson.loads(await request.read() or b"null")
        if self.delay:
            await asyncio.sleep(self.delay)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        async with self.changed:
            self.paths.append(request.path)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.bodies.append(body)
            self.peers.append(peer[1] if peer else 0)
            self.changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        return web.json_response({"ok": True}, status=self.status)

    def events(self) -> list[dict[str, Any]]:
        """Return every event received, flattening batch posts."""
        out: list[dict[str, Any]] = []
        for body in self.bodies:
            out += body if isinstance(body, list) else [body]
        return out

    def unique(self) -> int:
        """Count distinct messageIds received (redeliveries may repeat some)."""
        return len({e.get("messageId") for e in self.events()})

    async def wait_for(self, count: int, seconds: float = 60) -> list[dict[str, Any]]:
        """Wait until events with at least `count` distinct messageIds arrived."""
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: self.unique() >= count)
        return self.events()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """Serve the sink on an ephemeral loopback port."""
    box: dict[str, Sink] = {}

    async def handler(request: web.Request) -> web.Response:
        return await box["sink"].handle(request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    box["sink"] = Sink(url=f"http://127.0.0.1:{port}")
    yield box["sink"]
    await runner.cleanup()


def instance_fields(**options: Any) -> dict[str, Any]:
    """Turn the tests' short instance options (batch_wait_ms, timeout_ms, enabled, ...) into
    Instance fields (Durations, the state)."""

    def duration(seconds: float) -> duration_pb2.Duration:
        out = duration_pb2.Duration()
        out.FromTimedelta(timedelta(seconds=seconds))
        return out

    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key == "batch_wait_ms":
            fields["batch_wait"] = duration(value / 1000)
        elif key == "timeout_ms":
            fields["timeout"] = duration(value / 1000)
        elif key in ("retry_window_seconds", "retry_max_delay_seconds"):
            if value:
                fields[key.removesuffix("_seconds")] = duration(value)
        elif key == "enabled":
            fields["state"] = res.Instance.STATE_ENABLED if value else res.Instance.STATE_DISABLED
        elif key == "name":
            fields["display_name"] = value
        else:
            fields[key] = value
    return fields


@dataclass
class Platform:
    """A running data path and a workspace with one source."""

    registry: Registry
    router: RunningRouter
    executor: RunningExecutor
    http: httpx.AsyncClient
    owner: str
    source_id: str
    write_key: str
    workspace_id: str = ""

    async def neighbour(self) -> Platform:
        """Return another workspace with a source of its own, on this data path."""
        ws_id, owner, source = await _workspace_with_source(self.registry, "Neighbour")
        return replace(
            self,
            owner=owner,
            source_id=source.name.rsplit("/", 1)[-1],
            write_key=source.write_key,
            workspace_id=ws_id,
        )

    @property
    def workspace(self) -> str:
        """The workspace's name."""
        return f"workspaces/{self.workspace_id}"

    @property
    def source(self) -> str:
        """The source's name."""
        return f"{self.workspace}/sources/{self.source_id}"

    def instance_name(self, instance_id: str) -> str:
        """Return an instance's name."""
        return f"{self.workspace}/instances/{instance_id}"

    async def instance(
        self, code: str, endpoint: str, *, secret: str | None = None, **options: Any
    ) -> str:
        """Create a function and connect it to the source; wait until the data plane has it;
        return the instance's id. With `secret`, the function also has an encrypted setting
        `apiKey`, set to it."""
        name = f"fn-{len(self.executor.watcher.instances)}-{id(code) % 10_000}"
        definitions = [
            types_pb2.SettingDefinition(
                name="endpoint", type=types_pb2.SETTING_TYPE_STRING, required=True
            )
        ]
        values = struct_pb2.Struct()
        values.update({"endpoint": endpoint})
        if secret is not None:
            definitions.append(
                types_pb2.SettingDefinition(
                    name="apiKey", type=types_pb2.SETTING_TYPE_STRING, encrypted=True
                )
            )
            values.update({"apiKey": secret})
        fn = await self.registry.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=self.workspace,
                function=res.DestinationFunction(display_name=name),
                code=code,
                settings=definitions,
            ),
            metadata=auth(self.owner),
        )
        ins = await self.registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=self.workspace,
                instance=res.Instance(
                    function=fn.function.name,
                    source=self.source,
                    settings=values,
                    **instance_fields(**options),
                ),
            ),
            metadata=auth(self.owner),
        )
        iid = ins.instance.name.rsplit("/", 1)[-1]
        for watcher in (self.router.watcher, self.executor.watcher):
            await watcher.wait_until(lambda v: iid in v.instances)
        return iid


async def _workspace_with_source(registry: Registry, title: str) -> tuple[str, str, res.Source]:
    """Create a workspace (named `title` and random bits) with one source "web"; return its
    id, its owner's token and the source."""
    ws_id, owner = await registry.workspace(f"{title} {uuid.uuid4().hex[:6]}")
    made = await registry.stub.CreateSource(
        pb.CreateSourceRequest(parent=f"workspaces/{ws_id}", source=res.Source(display_name="web")),
        metadata=auth(owner),
    )
    return ws_id, owner, made.source


async def start_platform(
    registry: Registry,
    nats_url: str,
    stack: AsyncExitStack,
    *,
    own_consumer: bool = False,
    **executor_options: Any,
) -> Platform:
    """Start router and executor against the test registry; `stack` stops them.
    `executor_options`: ExecutorSettings fields to set; `own_consumer`: the executor reads
    this workspace's events through a durable consumer of its own (made with its options,
    such as its ack wait), not the session's shared one."""
    ws_id, owner, source = await _workspace_with_source(registry, "Pipeline")
    addr = f"127.0.0.1:{registry.port}"
    router = await start_router(
        RouterSettings(
            router_listen="127.0.0.1:0",
            router_http_listen="127.0.0.1:0",
            nats_url=nats_url,
            registry_addr=addr,
            service_token=SERVICE,
            database_url=registry.database_url,
            router_records_flush_seconds=0.2,
            # Its backlog gauges read the consumer the executor reads through.
            **({"executor_consumer": f"executor-{ws_id}"} if own_consumer else {}),
        ),
        stack,
    )
    executor = await start_executor(
        ExecutorSettings(
            executor_listen="127.0.0.1:0",
            nats_url=nats_url,
            registry_addr=addr,
            database_url=registry.database_url,
            service_token=SERVICE,
            **(
                {"executor_consumer": f"executor-{ws_id}", "executor_subjects": f"events.{ws_id}.>"}
                if own_consumer
                else {}
            ),
            **{
                "executor_workers": 1,
                "egress_allow": "127.0.0.1/32",
                "executor_records_flush_seconds": 0.2,
                "executor_shutdown_grace_seconds": 5,
                "executor_ack_wait_seconds": SHARED_ACK_WAIT_SECONDS,
                **executor_options,
            },
        ),
        stack,
    )
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30)
    stack.push_async_callback(http.aclose)
    return Platform(
        registry,
        router,
        executor,
        http,
        owner,
        source.name.rsplit("/", 1)[-1],
        source.write_key,
        ws_id,
    )


@asynccontextmanager
async def platform_on_own_nats(
    registry: Registry, directory: Path, **executor_options: Any
) -> AsyncIterator[tuple[Platform, NatsClient]]:
    """A data path (no retrier: held retries stay) on a NATS server of its own (its store in
    `directory`), with a client of that server; its executor reads every workspace's packs
    there (`executor_options`: as `start_platform`'s)."""
    server = EmbeddedNats(directory / "nats")
    server.start()
    try:
        async with AsyncExitStack() as stack:
            platform = await start_platform(registry, server.url, stack, **executor_options)
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            yield platform, nc
    finally:
        server.stop()


@pytest.fixture
async def platform(registry: Registry, nats_url: str) -> AsyncIterator[Platform]:
    """Start router and executor against the test registry and the session NATS."""
    async with AsyncExitStack() as stack:
        yield await start_platform(registry, nats_url, stack)
