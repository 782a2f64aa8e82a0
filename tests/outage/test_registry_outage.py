"""The registry down for 60 s under load: the data plane runs on its last config snapshot, loses
nothing and routes every event exactly as before; when the registry is back, the router and
the executor follow it again.

The registry runs as its own process (so it can die: SIGKILL, as a crashed pod); router and
executor run in-process against the session NATS; a local sink stands in for the function's
API and records which instance delivered what.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.devtools.embedded.process import free_port
from services.executor.app import RunningExecutor, start_executor
from services.executor.settings import ExecutorSettings
from services.router.app import RunningRouter, start_router
from services.router.settings import RouterSettings
from tests.eventually import eventually
from tests.pipeline.conftest import Sink, sink

__all__ = ["sink"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BOOTSTRAP = "efn_outage-bootstrap-token-0123456789"
SERVICE = "svc_outage-service-token-0123456789"
OUTAGE_SECONDS = 60
RATE_PER_SECOND = 10  # /v1/batch requests
EVENTS_PER_REQUEST = 10
CODE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """Build call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class RegistryProcess:
    """The registry as a process on a fixed address, which the test kills and restarts."""

    address: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the registry process."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.registry"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL the registry (a crash: no goodbye to the WatchConfig streams)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def serving(self) -> bool:
        """Tell whether the registry answers its health check with SERVING."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the registry exited: {self.log.read_text()[-2000:]}")
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def registry_process(fresh_database: str, tmp_path: Path) -> Iterator[RegistryProcess]:
    """Run the registry as a process on a fresh database; stop it afterwards."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "EVENTFN_DATABASE_URL": fresh_database,
        "EVENTFN_REGISTRY_LISTEN": address,
        "EVENTFN_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_STATE_DIR": str(tmp_path / "registry"),
    }
    registry = RegistryProcess(address, env, tmp_path / "registry.log")
    registry.start()
    try:
        yield registry
    finally:
        if registry.process is not None and registry.process.poll() is None:
            registry.process.terminate()
            registry.process.wait(timeout=30)


@dataclass
class DataPlane:
    """Router and executor in-process, the workspace's write key and its two instances."""

    router: RunningRouter
    executor: RunningExecutor
    http: httpx.AsyncClient
    write_key: str
    both_key: str  # the `integrations` key that sends an event to instance "Only" alone


@pytest.fixture
async def data_plane(
    registry_process: RegistryProcess, nats_url: str, fresh_database: str, sink: Sink
) -> AsyncIterator[DataPlane]:
    """Two instances on one source: `Every` (all events) and `Only` (also those whose
    integrations object names it alone); router and executor following the registry."""
    await eventually(registry_process.serving, "the registry serving", seconds=60)
    workspace_name = f"Outage {uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as stack:
        channel = grpc.aio.insecure_channel(registry_process.address)
        stack.push_async_callback(channel.close)
        stub = registry_pb2_grpc.RegistryStub(channel)
        workspace = await stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name=workspace_name)),
            metadata=auth(BOOTSTRAP),
        )
        owner = auth(workspace.token)
        source = (
            await stub.CreateSource(
                pb.CreateSourceRequest(
                    parent=workspace.workspace.name, source=res.Source(display_name="web")
                ),
                metadata=owner,
            )
        ).source
        for name in ("Every", "Only"):
            function = await stub.CreateFunction(
                pb.CreateFunctionRequest(
                    parent=workspace.workspace.name,
                    function=res.DestinationFunction(display_name=name),
                    code=CODE,
                    settings=[
                        types_pb2.SettingDefinition(
                            name="endpoint", type=types_pb2.SETTING_TYPE_STRING, required=True
                        )
                    ],
                ),
                metadata=owner,
            )
            values = struct_pb2.Struct()
            values.update({"endpoint": f"{sink.url}/{name}"})
            await stub.CreateInstance(
                pb.CreateInstanceRequest(
                    parent=workspace.workspace.name,
                    instance=res.Instance(
                        function=function.function.name, source=source.name, settings=values
                    ),
                ),
                metadata=owner,
            )
        # A separate consumer and subject filter: other tests' packs on the session NATS are
        # not this executor's business.
        consumer = f"outage-{uuid.uuid4().hex[:8]}"
        common = {
            "nats_url": nats_url,
            "registry_addr": registry_process.address,
            "service_token": SERVICE,
            "executor_consumer": consumer,
        }
        router = await start_router(
            RouterSettings(router_listen="127.0.0.1:0", router_http_listen="127.0.0.1:0", **common),
            stack,
        )
        executor = await start_executor(
            ExecutorSettings(
                executor_listen="127.0.0.1:0",
                database_url=fresh_database,
                executor_workers=1,
                egress_allow="127.0.0.1/32",
                executor_subjects=f"events.{workspace.workspace.name.rsplit('/', 1)[-1]}.*",
                executor_records_flush_seconds=0.5,
                **common,
            ),
            stack,
        )
        for watcher in (router.watcher, executor.watcher):
            await watcher.wait_until(lambda v: len(v.instances) == 2)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=10)
        stack.push_async_callback(http.aclose)
        yield DataPlane(router, executor, http, source.write_key, f"Only ({workspace_name})")


def batch(number: int, only_key: str) -> list[dict[str, object]]:
    """Build request `number`: even events for every instance, odd ones for `Only` alone."""
    events: list[dict[str, object]] = []
    for i in range(EVENTS_PER_REQUEST):
        event: dict[str, object] = {
            "type": "track",
            "event": "Outage",
            "userId": "u",
            "messageId": f"o-{number}-{i}",
        }
        if i % 2:
            event["integrations"] = {"All": False, only_key: True}
        events.append(event)
    return events


async def test_registry_down_for_a_minute_loses_nothing_and_changes_no_routing(
    registry_process: RegistryProcess, data_plane: DataPlane, sink: Sink
) -> None:
    router, executor = data_plane.router, data_plane.executor
    accepted: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal refused
        start, number = time.monotonic(), 0
        while not stop.is_set():
            events = batch(number, data_plane.both_key)
            response = await data_plane.http.post(
                "/v1/batch", json={"batch": events}, auth=(data_plane.write_key, "")
            )
            if response.status_code == 200:
                accepted.extend(str(e["messageId"]) for e in events)
            else:
                refused += 1
            number += 1
            # Open loop at RATE_PER_SECOND: the schedule, not a wait for a condition.
            await asyncio.sleep(max(0.0, start + number / RATE_PER_SECOND - time.monotonic()))

    generator = asyncio.create_task(load())
    try:
        await eventually(lambda: len(sink.events()) >= 100, "deliveries flowing")
        revisions = (router.watcher.revision, executor.watcher.revision)
        registry_process.kill()
        await eventually(
            lambda: not router.watcher.connected and not executor.watcher.connected,
            "the data plane noticing the registry is gone",
        )
        down_at, delivered_before = time.monotonic(), len(sink.events())
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            # Throughout the outage: the last snapshot stays in force.
            assert (router.watcher.revision, executor.watcher.revision) == revisions
            assert len(router.watcher.instances) == len(executor.watcher.instances) == 2
            await asyncio.sleep(1)  # a one-second sampling of a state held for a minute
        delivered_during = len(sink.events()) - delivered_before
        registry_process.start()
        await eventually(registry_process.serving, "the registry back", seconds=60)
        await eventually(
            lambda: router.watcher.connected and executor.watcher.connected,
            "router and executor following the registry again",
            seconds=60,
        )
        await eventually(
            lambda: len(sink.events()) >= delivered_before + delivered_during + 100,
            "deliveries after the registry came back",
        )
    finally:
        stop.set()
        await generator

    assert refused == 0, f"{refused} requests refused while the registry was down"
    wanted = Counter({f"/Every:{m}": 1 for m in accepted if int(m.rsplit("-", 1)[1]) % 2 == 0})
    wanted.update({f"/Only:{m}": 1 for m in accepted})
    await eventually(
        lambda: len(sink.events()) >= wanted.total(), "every accepted event delivered", seconds=60
    )
    got = Counter(f"{p}:{e['messageId']}" for p, e in zip(sink.paths, sink.bodies, strict=True))
    missing = wanted - got
    unexpected = got - wanted
    print(
        f"registry outage: {len(accepted)} events accepted, {delivered_during} deliveries "
        f"during the {OUTAGE_SECONDS} s outage, {wanted.total()} wanted, {got.total()} made"
    )
    assert delivered_during > OUTAGE_SECONDS * RATE_PER_SECOND, "delivery went on meanwhile"
    assert not missing, f"{missing.total()} deliveries missing: {list(missing)[:10]}"
    assert not unexpected, f"routed differently or twice: {list(unexpected)[:10]}"
