"""Config changes at scale: what one change costs with 100, 1,000 and 10,000 instances.

Starts the platform as `eventfn up` runs it, fills it to each size (sources and instances
written straight into PostgreSQL in one transaction, announced as one config change), then
creates instances one at a time through the API and prints, per size: `CreateInstance` p50
and p99, whether an event sent 100 ms after each create reached the new instance, and the
registry's and router's CPU per change read from /proc, with the ratio to the smallest size
(constant cost means a ratio near 1). BENCH_CONFIG_SIZES sets the sizes (default
"100,1000,10000"), BENCH_CONFIG_CREATES the creates per size (default 30). Last, what one
change costs a data-plane process's copy of the configuration, timed in this process at up
to 100,000 instances (`apply.py`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from contextlib import AsyncExitStack

import aiohttp
import grpc
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import CORES, auth
from bench.config.apply import print_apply_costs
from bench.platform import Processes, Sink, platform, processes, start_sink
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common.settings import sqlalchemy_url
from services.registry.store import Instance, RegistryStore, Source, new_id, now

SIZES = tuple(int(n) for n in os.environ.get("BENCH_CONFIG_SIZES", "100,1000,10000").split(","))
CREATES = int(os.environ.get("BENCH_CONFIG_CREATES", "30"))
SEND_AFTER = 0.1
CODE = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
}
"""


class Fleet:
    """One workspace's function, and the instances of it, through the API or in bulk."""

    def __init__(self, stub: registry_pb2_grpc.RegistryStub, token: str, database_url: str):
        self.stub = stub
        self.token = token
        self.engine = create_async_engine(sqlalchemy_url(database_url))
        self.store = RegistryStore(self.engine)
        self.size = 0

    async def start(self) -> None:
        me = await self.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(self.token))
        self.workspace = me.workspace.name
        self.workspace_id = self.workspace.split("/")[1]
        fn = await self.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=self.workspace,
                function=res.DestinationFunction(display_name=f"config-{uuid.uuid4().hex[:6]}"),
                code=CODE,
                settings=[
                    types_pb2.SettingDefinition(name="endpoint", type=types_pb2.SETTING_TYPE_STRING)
                ],
            ),
            metadata=auth(self.token),
        )
        self.function = fn.function.name
        self.function_id = self.function.rsplit("/", 1)[-1]
        self.version_id = fn.version.name.rsplit("/", 1)[-1]

    async def fill(self, size: int, endpoint: str) -> str:
        """Add sources and instances up to `size`, in one transaction and one change; return
        the write key of the last source added."""
        sources = [
            Source(
                id=new_id("src"),
                workspace_id=self.workspace_id,
                name=f"fill {uuid.uuid4().hex}",
                write_key=uuid.uuid4().hex,
                created_at=now(),
            )
            for _ in range(size - self.size)
        ]
        instances = [
            Instance(
                id=new_id("ins"),
                workspace_id=self.workspace_id,
                function_id=self.function_id,
                source_id=src.id,
                version_id=self.version_id,
                name=f"fill {src.id}",
                settings={"endpoint": endpoint},
                filters=[],
                revision=1,
                created_at=now(),
                updated_at=now(),
            )
            for src in sources
        ]
        async with self.store.transaction() as s:
            s.add_all(sources)
            await s.flush()
            s.add_all(instances)
            await s.flush()
            await self.store.bump_config(s, workspaces=[self.workspace_id])
        self.size = size
        return sources[-1].write_key

    async def source(self) -> pb.CreateSourceResponse:
        return await self.stub.CreateSource(
            pb.CreateSourceRequest(
                parent=self.workspace,
                source=res.Source(display_name=f"src {uuid.uuid4().hex[:10]}"),
            ),
            metadata=auth(self.token),
        )

    async def instance(self, source: str, endpoint: str) -> float:
        """Create an instance through the API; return how long it took (s)."""
        values = struct_pb2.Struct()
        values.update({"endpoint": endpoint})
        started = time.perf_counter()
        await self.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=self.workspace,
                instance=res.Instance(function=self.function, source=source, settings=values),
            ),
            metadata=auth(self.token),
        )
        self.size += 1
        return time.perf_counter() - started


async def send(http: aiohttp.ClientSession, url: str, write_key: str, label: str) -> None:
    event = {"type": "track", "userId": "u", "event": "Config", "messageId": label}
    async with http.post(url, json=event, auth=aiohttp.BasicAuth(write_key, "")) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {await resp.text()}")


async def known(http: aiohttp.ClientSession, url: str, write_key: str) -> float:
    """Wait until the router accepts a write key; return how long that took (s)."""
    started = time.perf_counter()
    while True:
        event = {"type": "track", "userId": "u", "event": "Probe"}
        async with http.post(url, json=event, auth=aiohttp.BasicAuth(write_key, "")) as resp:
            if resp.status == 200:
                return time.perf_counter() - started
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"the router never learned a source: {await resp.text()}")
        await asyncio.sleep(0.05)


async def arrived(sink: Sink, count: int, seconds: float) -> int:
    """Wait up to `seconds` for `count` events at the sink; return how many came."""
    await sink.wait_until(lambda: sink.arrived >= count, seconds)
    return sink.arrived


async def stage(fleet: Fleet, procs: Processes, sink: Sink, http: aiohttp.ClientSession, url: str):
    """Create CREATES instances one by one; return (create times, reached, CPU s per role)."""
    sources = [(await fleet.source()).source for _ in range(CREATES)]
    await known(http, url, sources[-1].write_key)  # the router has them before the timed part
    sink.arrived = 0
    before = procs.sample()
    times = []
    for i, source in enumerate(sources):
        times.append(await fleet.instance(source.name, f"{sink.url}/{i}"))
        await asyncio.sleep(SEND_AFTER)
        await send(http, url, source.write_key, f"config-{uuid.uuid4().hex}")
    reached = await arrived(sink, CREATES, 15.0)
    after = procs.sample()
    cpu = {role: (after[role] - before[role]) / CREATES for role in ("registry", "router")}
    return times, reached, cpu


async def run(endpoints: dict[str, str], procs: Processes) -> None:
    token = endpoints["admin token"]
    url = f"http://{os.environ['EVENTFN_ROUTER_HTTP_LISTEN']}/v1/track"
    async with AsyncExitStack() as stack:
        sink = await start_sink(stack)
        channel = grpc.aio.insecure_channel(os.environ["EVENTFN_REGISTRY_LISTEN"])
        stack.push_async_callback(channel.close)
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        fleet = Fleet(registry_pb2_grpc.RegistryStub(channel), token, endpoints["postgres"])
        stack.push_async_callback(fleet.engine.dispose)
        await fleet.start()
        baseline: dict[str, float] = {}
        for size in SIZES:
            started = time.perf_counter()
            write_key = await fleet.fill(size, f"{sink.url}/fill")
            filled = time.perf_counter() - started
            learned = await known(http, url, write_key)
            times, reached, cpu = await stage(fleet, procs, sink, http, url)
            ms = sorted(t * 1e3 for t in times)
            baseline = baseline or cpu
            print(
                f"{size:>6} instances (filled in {filled:.1f} s, routed after {learned:.1f} s): "
                f"CreateInstance p50 "
                f"{statistics.median(ms):6.1f} ms  p99 {ms[-1]:6.1f} ms  event sent "
                f"{SEND_AFTER * 1e3:.0f} ms after create reached the new instance: "
                f"{reached}/{CREATES}  CPU ms/change: "
                + "  ".join(
                    f"{role} {cpu[role] * 1e3:.2f} ({cpu[role] / baseline[role]:.2f}x)"
                    for role in cpu
                ),
                flush=True,
            )


def main() -> None:
    """Run the config-change benchmark."""
    print(f"bench.config: {CORES} cores, sizes {SIZES}, {CREATES} creates per size", flush=True)
    # One workspace of 10,000 instances and sources: past the default quotas.
    quotas = {f"EVENTFN_REGISTRY_{kind}_PER_WORKSPACE": "0" for kind in ("INSTANCES", "SOURCES")}
    with platform(**quotas) as (running, endpoints):
        asyncio.run(run(endpoints, processes(running)))
    print_apply_costs()
