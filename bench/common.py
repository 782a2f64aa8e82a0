"""Shared benchmark setup: real servers in a temp dir, the services in-process, a local sink.

Every benchmark prints ratios against a baseline measured in the same run (the machine is
shared and noisy), with the absolute figures and the core count.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
from aiohttp import web
from google.protobuf import duration_pb2, struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common.config_watch import ConfigWatcher
from services.devtools.embedded import EmbeddedNats, EmbeddedPostgres
from services.executor.app import RunningExecutor, start_executor
from services.executor.settings import ExecutorSettings
from services.registry.app import start_registry
from services.registry.settings import RegistrySettings
from services.router.app import RunningRouter, start_router
from services.router.settings import RouterSettings

BOOTSTRAP = "efn_bootstrap-bench-token-0123456789"
SERVICE = "svc-bench-token-0123456789"
CORES = os.cpu_count() or 1
# Where in-process services listen (metrics included, served as in production): any free
# port, so that a benchmark runs beside a platform on the default ports.
FREE_PORT = "127.0.0.1:0"


@dataclass(frozen=True)
class Servers:
    """Running PostgreSQL and NATS (JetStream, `sync_interval: always`) in a temp dir."""

    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    root: Path


@contextmanager
def servers() -> Iterator[Servers]:
    """Start PostgreSQL and NATS in a fresh temp dir; stop them and remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="eventfn-bench-"))
    pg = EmbeddedPostgres(root / "postgres", stop_with_parent=True)
    nats_server = EmbeddedNats(root / "nats", stop_with_parent=True)
    try:
        pg.start()
        nats_server.start()
        yield Servers(pg, nats_server, root)
    finally:
        nats_server.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """Build call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


def instance_fields(**options: Any) -> dict[str, Any]:
    """Turn short instance options (batch_wait_ms, timeout_ms, ...) into Instance fields."""
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("batch_wait_ms", "timeout_ms"):
            wait = duration_pb2.Duration()
            wait.FromTimedelta(timedelta(milliseconds=value))
            fields[key.removesuffix("_ms")] = wait
        else:
            fields[key] = value
    return fields


@dataclass
class Control:
    """A running registry with one workspace and one source."""

    stub: registry_pb2_grpc.RegistryAsyncStub
    addr: str
    database_url: str
    owner: str
    workspace_id: str
    source_id: str
    write_key: str

    async def instance(self, code: str, endpoint: str, **options: Any) -> str:
        """Create a function with an `endpoint` setting, connect it to the source; return its id."""
        fn = await self.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=f"workspaces/{self.workspace_id}",
                function=res.DestinationFunction(display_name=f"bench-{uuid.uuid4().hex[:8]}"),
                code=code,
                settings=[
                    types_pb2.SettingDefinition(
                        name="endpoint", type=types_pb2.SETTING_TYPE_STRING, required=True
                    )
                ],
            ),
            metadata=auth(self.owner),
        )
        values = struct_pb2.Struct()
        values.update({"endpoint": endpoint})
        created = await self.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=f"workspaces/{self.workspace_id}",
                instance=res.Instance(
                    function=fn.function.name,
                    source=f"workspaces/{self.workspace_id}/sources/{self.source_id}",
                    settings=values,
                    **instance_fields(**options),
                ),
            ),
            metadata=auth(self.owner),
        )
        return created.instance.name.rsplit("/", 1)[-1]

    async def delete_instance(self, instance_id: str) -> None:
        """Delete an instance (so the next benchmark's events are not routed to it)."""
        await self.stub.DeleteInstance(
            pb.DeleteInstanceRequest(
                name=f"workspaces/{self.workspace_id}/instances/{instance_id}"
            ),
            metadata=auth(self.owner),
        )


async def start_control(srv: Servers, stack: AsyncExitStack) -> Control:
    """Start a registry on a new database; create a workspace and a source."""
    database_url = srv.postgres.create_database(f"bench_{uuid.uuid4().hex[:12]}")
    running = await start_registry(
        RegistrySettings(
            database_url=database_url,
            registry_listen=FREE_PORT,
            registry_metrics_listen=FREE_PORT,
            state_dir=srv.root / "registry",
            bootstrap_token=BOOTSTRAP,
            service_token=SERVICE,
            log_level="WARNING",
        ),
        stack,
    )
    addr = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(addr)
    stack.push_async_callback(channel.close)
    stub = registry_pb2_grpc.RegistryStub(channel)
    ws = await stub.CreateWorkspace(
        pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name="Bench")),
        metadata=auth(BOOTSTRAP),
    )
    source = (
        await stub.CreateSource(
            pb.CreateSourceRequest(parent=ws.workspace.name, source=res.Source(display_name="web")),
            metadata=auth(ws.token),
        )
    ).source
    return Control(
        stub,
        addr,
        database_url,
        ws.token,
        ws.workspace.name.rsplit("/", 1)[-1],
        source.name.rsplit("/", 1)[-1],
        source.write_key,
    )


def router_values(control: Control, nats_url: str, **overrides: Any) -> dict[str, Any]:
    """Return the settings of a benchmark's router (any free ports) against the control plane."""
    return {
        "router_listen": FREE_PORT,
        "router_http_listen": FREE_PORT,
        "router_metrics_listen": FREE_PORT,
        "nats_url": nats_url,
        "registry_addr": control.addr,
        "service_token": SERVICE,
        "log_level": "WARNING",
        # The router's throughput is measured, not a source's budget (on a faster machine one
        # source's loads would pass it).
        "router_source_bytes_per_second": 0,
        **overrides,
    }


async def router_on(
    control: Control, nats_url: str, stack: AsyncExitStack, **overrides: Any
) -> RunningRouter:
    """Start a router in-process against the control plane."""
    values = router_values(control, nats_url, **overrides)
    router = await start_router(RouterSettings(**values), stack)
    await router.watcher.ready.wait()
    return router


async def executor_on(
    control: Control, nats_url: str, stack: AsyncExitStack, **overrides: Any
) -> RunningExecutor:
    """Start an executor (one V8 worker per core unless overridden) in-process."""
    values: dict[str, Any] = {
        "executor_listen": FREE_PORT,
        "executor_metrics_listen": FREE_PORT,
        "nats_url": nats_url,
        "registry_addr": control.addr,
        "database_url": control.database_url,
        "service_token": SERVICE,
        "egress_allow": "127.0.0.1/32",
        "executor_shutdown_grace_seconds": 5,
        "log_level": "WARNING",
        **overrides,
    }
    executor = await start_executor(ExecutorSettings(**values), stack)
    await executor.watcher.ready.wait()
    return executor


async def until_known(instance_id: str, *watchers: ConfigWatcher, present: bool = True) -> None:
    """Wait until every watcher's view has (or, present=False, no longer has) the instance."""
    for watcher in watchers:
        await watcher.wait_until(lambda v: (instance_id in v.instances) == present)


@dataclass
class Sink:
    """A real HTTP server on 127.0.0.1 counting distinct messageIds and requests."""

    url: str = ""
    ids: set[str] = field(default_factory=set)
    requests: int = 0
    status: int = 200
    parse: bool = True
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        """Record the messageIds of a JSON body (an event or an array); answer `status`."""
        raw = await request.read()
        self.requests += 1
        if self.parse and raw:
            body = orjson.loads(raw)
            for event in body if isinstance(body, list) else [body]:
                if isinstance(event, dict) and self.status < 400:
                    self.ids.add(str(event.get("messageId")))
        self.changed.set()
        return web.Response(
            body=b'{"ok":true}', status=self.status, content_type="application/json"
        )

    async def wait_for(self, count: int, seconds: float) -> bool:
        """Wait until `count` distinct messageIds arrived; False after `seconds`."""
        return await self.wait_until(lambda: len(self.ids) >= count, seconds)

    async def wait_until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Wait until `done()` holds (checked after each request); False after `seconds`."""
        return await wait_changed(self.changed, done, seconds)


async def wait_changed(changed: asyncio.Event, done: Callable[[], bool], seconds: float) -> bool:
    """Wait until `done()` holds, checking it whenever `changed` is set (and each second);
    False after `seconds`."""
    deadline = time.monotonic() + seconds
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        changed.clear()
        try:
            async with asyncio.timeout(min(left, 1.0)):
                await changed.wait()
        except TimeoutError:
            pass
    return True


async def serve_posts(
    stack: AsyncExitStack, handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> str:
    """Serve `handle` for POSTs to any path on an ephemeral loopback port until `stack`
    closes; return the server's base URL."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


async def start_sink(stack: AsyncExitStack) -> Sink:
    """Serve a Sink on an ephemeral loopback port until `stack` closes."""
    sink = Sink()
    sink.url = await serve_posts(stack, sink.handle)
    return sink


def client_session(stack: AsyncExitStack, limit: int = 200) -> aiohttp.ClientSession:
    """Return a keep-alive aiohttp session closed with `stack`."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    stack.push_async_callback(session.close)
    return session


def track(i: int, run: str) -> dict[str, Any]:
    """Build a small Segment track event with a unique messageId."""
    return {
        "type": "track",
        "userId": f"user-{i % 1000}",
        "event": "Order Completed",
        "messageId": f"{run}-{i}",
        "properties": {"total": i % 500, "currency": "EUR", "sku": f"sku-{i % 97}"},
    }


async def concurrent(
    total: int, concurrency: int, call: Callable[[int], Awaitable[object]], seconds: float = 60
) -> tuple[int, float]:
    """Run call(0..total-1) over `concurrency` lanes, stopping after `seconds`; (done, elapsed)."""
    counter = 0
    done = 0
    deadline = time.monotonic() + seconds

    async def lane() -> None:
        nonlocal counter, done
        while counter < total and time.monotonic() < deadline:
            i = counter
            counter += 1
            await call(i)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def line(label: str, value: float, unit: str, baseline: float | None = None, of: str = "") -> None:
    """Print one result: the absolute figure and, when given, its ratio to the baseline."""
    ratio = f"   = {value / baseline:6.2f} × {of}" if baseline else ""
    print(f"  {label:<52} {value:>12,.0f} {unit}{ratio}", flush=True)


def header(title: str) -> None:
    """Print a benchmark's title with the machine's core count."""
    print(f"{title} (cores: {CORES}, pid {os.getpid()})", flush=True)


@dataclass(frozen=True)
class Load:
    """What a load-generating child process did: events accepted, requests refused, seconds,
    and its own CPU seconds meanwhile (on one machine, the load generator's CPU is CPU the
    platform does not get)."""

    events: int
    failures: int
    elapsed: float
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Accepted events per second."""
        return self.events / self.elapsed if self.elapsed else 0.0


def http_load(
    url: str,
    write_key: str,
    per_request: int,
    requests: int,
    concurrency: int,
    seconds: float,
    run: str = "",
) -> Load:
    """POST `requests` requests (`/v1/batch` when per_request > 1, else `/v1/track`); in a child.

    The events' messageIds are `<run>-<index>` (run: random unless given).
    """
    import uvloop

    return uvloop.run(_http_load(url, write_key, per_request, requests, concurrency, seconds, run))


async def _http_load(
    url: str,
    write_key: str,
    per_request: int,
    requests: int,
    concurrency: int,
    seconds: float,
    run: str,
) -> Load:
    run = run or uuid.uuid4().hex[:8]
    if per_request > 1:
        path = "/v1/batch"
        bodies = [
            orjson.dumps({"batch": [track(r * per_request + i, run) for i in range(per_request)]})
            for r in range(requests)
        ]
    else:
        path, bodies = "/v1/track", [orjson.dumps(track(r, run)) for r in range(requests)]
    headers = {
        "Authorization": aiohttp.BasicAuth(write_key, "").encode(),
        "Content-Type": "application/json",
    }
    failures = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), base_url=url
    ) as session:

        async def post(i: int) -> None:
            nonlocal failures
            async with session.post(path, data=bodies[i], headers=headers) as resp:
                await resp.read()
                failures += resp.status != 200

        # Warm the connections (and the router's caches) before timing.
        await concurrent(min(concurrency, requests), concurrency, post)
        started = time.process_time()
        done, elapsed = await concurrent(requests, concurrency, post, seconds)
    return Load((done - failures) * per_request, failures, elapsed, time.process_time() - started)


def grpc_load(
    addr: str,
    write_key: str,
    per_request: int,
    requests: int,
    concurrency: int,
    seconds: float,
    stream: bool,
) -> Load:
    """Call Router.Ingest (or IngestStream, one stream per lane) with batches; in a child."""
    import uvloop

    return uvloop.run(
        _grpc_load(addr, write_key, per_request, requests, concurrency, seconds, stream)
    )


async def _grpc_load(
    addr: str,
    write_key: str,
    per_request: int,
    requests: int,
    concurrency: int,
    seconds: float,
    stream: bool,
) -> Load:
    from eventfn_api.router.v1 import router_pb2, router_pb2_grpc

    run = uuid.uuid4().hex[:8]
    bodies = [
        orjson.dumps([track(r * per_request + i, run) for i in range(per_request)])
        for r in range(requests)
    ]
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        if not stream:

            async def call(i: int) -> None:
                await stub.Ingest(
                    router_pb2.IngestRequest(write_key=write_key, events_json=bodies[i])
                )

            await concurrent(min(concurrency, requests), concurrency, call)
            started = time.process_time()
            done, elapsed = await concurrent(requests, concurrency, call, seconds)
            return Load(done * per_request, 0, elapsed, time.process_time() - started)

        deadline = time.monotonic() + seconds
        accepted = 0

        async def lane(mine: list[bytes]) -> None:
            nonlocal accepted
            call = stub.IngestStream()

            async def write() -> None:
                for body in mine:
                    if time.monotonic() > deadline:
                        break
                    await call.write(
                        router_pb2.IngestStreamRequest(write_key=write_key, events_json=body)
                    )
                await call.done_writing()

            writer = asyncio.create_task(write())
            async for response in call:
                accepted += response.accepted
            await writer

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(lane(bodies[k::concurrency]) for k in range(concurrency)))
        return Load(accepted, 0, time.perf_counter() - start, time.process_time() - cpu)


def in_child(pool: Any, fn: Callable[..., Load], *args: Any) -> Awaitable[Load]:
    """Run a load function in the process pool (its own CPU, not this event loop's)."""
    return asyncio.get_running_loop().run_in_executor(pool, fn, *args)
