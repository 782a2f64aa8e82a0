"""Latency and CPU per event on the whole platform as `eventfn up` runs it (one process per
service, embedded PostgreSQL and NATS), at fixed open-loop rates.

Drives single-event `/v1/track` requests into an onTrack making one fetch, and `/v1/batch`
requests of 100 into an onBatch making one fetch per call, to a local sink. Prints, per rate:
sink-side latency p50/p99/p99.9 (send → the sink has the event), delivered events/s, and CPU
µs per event of each process read from /proc (steadier than wall time on a shared machine).
BENCH_SECONDS sets each rate's duration (default 8), BENCH_RATES the rates (default
"100,500,1000,2000").
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import psutil
from aiohttp import web
from google.protobuf import struct_pb2

from bench.common import CORES, auth, instance_fields
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.cli.up import Platform

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
RATES = tuple(int(r) for r in os.environ.get("BENCH_RATES", "100,500,1000,2000").split(","))
TICK = os.sysconf("SC_CLK_TCK")
SINGLE = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                  body: JSON.stringify(event)})
}
"""
BATCH = """
async function onBatch(events, settings) {
  await fetch(settings.endpoint, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                  body: JSON.stringify(events)})
}
"""


def _free() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def platform() -> Iterator[tuple[Platform, dict[str, str]]]:
    """Start the platform in a temp state dir, on free ports; stop it afterwards."""
    env = {
        "EVENTFN_REGISTRY_LISTEN": _free(),
        "EVENTFN_ROUTER_LISTEN": _free(),
        "EVENTFN_ROUTER_HTTP_LISTEN": _free(),
        "EVENTFN_EXECUTOR_LISTEN": _free(),
        "EVENTFN_RETRIER_LISTEN": _free(),
        "EVENTFN_EGRESS_ALLOW": "127.0.0.1/32",
        "EVENTFN_LOG_LEVEL": "WARNING",
        **{
            f"EVENTFN_{s}_METRICS_LISTEN": "" for s in ("REGISTRY", "ROUTER", "EXECUTOR", "RETRIER")
        },
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    state = Path(tempfile.mkdtemp(prefix="eventfn-latency-"))
    running = Platform(state)
    try:
        endpoints = running.start()
        yield running, endpoints
    finally:
        running.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cpu_seconds(pid: int, children: bool = False) -> float:
    """Return a process's user+system CPU seconds (with its reaped children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


@dataclass
class Processes:
    """The platform's processes by role."""

    pids: dict[str, int]

    def sample(self) -> dict[str, float]:
        """Return CPU seconds per role (V8 workers: the executor's children, live or reaped)."""
        out = {role: cpu_seconds(pid) for role, pid in self.pids.items()}
        executor = psutil.Process(self.pids["executor"])
        workers = sum(sum(c.cpu_times()[:2]) for c in executor.children(recursive=True))
        reaped = cpu_seconds(self.pids["executor"], children=True) - out["executor"]
        out["V8 workers"] = workers + reaped
        return out


def processes(running: Platform) -> Processes:
    pids = {spec.name: proc.pid for spec, proc in running.children}
    if running.nats is not None and running.nats._process is not None:
        pids["nats-server"] = running.nats._process.pid
    return Processes(pids)


@dataclass
class Sink:
    """Records when each event arrived (ns) and when it was sent (from the event)."""

    latencies: list[float] = field(default_factory=list)
    arrived: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        body = orjson.loads(await request.read())
        for event in body if isinstance(body, list) else [body]:
            sent = event.get("properties", {}).get("sent_ns")
            if sent:
                self.latencies.append((now - sent) / 1e6)
        self.arrived += len(body) if isinstance(body, list) else 1
        self.changed.set()
        return web.json_response({"ok": True})


async def start_sink(stack: AsyncExitStack) -> Sink:
    sink = Sink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.url = f"http://127.0.0.1:{runner.addresses[0][1]}/in"
    return sink


async def instance(
    stub: registry_pb2_grpc.RegistryStub,
    token: str,
    source_name: str,
    code: str,
    sink: Sink,
    **options: Any,
) -> str:
    parent = source_name.split("/sources/")[0]
    fn = await stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name=f"latency-{uuid.uuid4().hex[:6]}"),
            code=code,
            settings=[
                types_pb2.SettingDefinition(name="endpoint", type=types_pb2.SETTING_TYPE_STRING)
            ],
        ),
        metadata=auth(token),
    )
    values = struct_pb2.Struct()
    values.update({"endpoint": sink.url})
    created = await stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(
                function=fn.function.name,
                source=source_name,
                settings=values,
                **instance_fields(**options),
            ),
        ),
        metadata=auth(token),
    )
    return created.instance.name.rsplit("/", 1)[-1]


async def drive(
    http: aiohttp.ClientSession, url: str, write_key: str, rate: int, per_request: int, run: str
) -> int:
    """Send `rate` events/s for SECONDS, open-loop (no request waits for another)."""
    requests = int(rate * SECONDS / per_request)
    interval = per_request / rate
    start = time.perf_counter()
    tasks = []
    auth_ = aiohttp.BasicAuth(write_key, "")

    async def one(i: int) -> None:
        events = [
            {
                "type": "track",
                "userId": "u",
                "event": "Latency",
                "messageId": f"{run}-{i}-{j}",
                "properties": {"sent_ns": time.time_ns()},
            }
            for j in range(per_request)
        ]
        body = events[0] if per_request == 1 else {"batch": events}
        async with http.post(url, json=body, auth=auth_) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {await resp.text()}")

    for i in range(requests):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return requests * per_request


async def measure(
    label: str,
    procs: Processes,
    sink: Sink,
    http: aiohttp.ClientSession,
    url: str,
    write_key: str,
    rate: int,
    per_request: int,
) -> None:
    sink.latencies.clear()
    sink.arrived = 0
    before = procs.sample()
    started = time.perf_counter()
    sent = await drive(http, url, write_key, rate, per_request, uuid.uuid4().hex[:6])
    async with asyncio.timeout(120):
        while sink.arrived < sent:
            sink.changed.clear()
            await sink.changed.wait()
    elapsed = time.perf_counter() - started
    after = procs.sample()
    lat = sorted(sink.latencies)
    q = statistics.quantiles(lat, n=1000)
    cpu = {role: (after[role] - before[role]) / sent * 1e6 for role in after}
    print(
        f"{label} {rate:>5}/s: p50 {q[499]:7.1f} ms  p99 {q[989]:7.1f} ms  p99.9 {q[998]:7.1f} ms"
        f"  delivered {sent / elapsed:7.0f}/s  CPU µs/event: "
        + "  ".join(f"{role} {v:.0f}" for role, v in cpu.items())
        + f"  (all {sum(cpu.values()):.0f})",
        flush=True,
    )


async def run(running: Platform, endpoints: dict[str, str]) -> None:
    token = endpoints["admin token"]
    registry = os.environ["EVENTFN_REGISTRY_LISTEN"]
    url_base = f"http://{os.environ['EVENTFN_ROUTER_HTTP_LISTEN']}"
    async with AsyncExitStack() as stack:
        sink = await start_sink(stack)
        channel = grpc.aio.insecure_channel(registry)
        stack.push_async_callback(channel.close)
        stub = registry_pb2_grpc.RegistryStub(channel)
        procs = processes(running)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        stack.push_async_callback(http.close)
        for label, code, per_request, path, options in (
            ("single /v1/track", SINGLE, 1, "/v1/track", {}),
            (
                "batch  /v1/batch",
                BATCH,
                100,
                "/v1/batch",
                {"batch_size": 100, "batch_wait_ms": 200},
            ),
        ):
            me = await stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))
            source = (
                await stub.CreateSource(
                    pb.CreateSourceRequest(
                        parent=me.workspace.name,
                        source=res.Source(
                            display_name=f"latency-{label[:5]}-{uuid.uuid4().hex[:4]}"
                        ),
                    ),
                    metadata=auth(token),
                )
            ).source
            await instance(stub, token, source.name, code, sink, **options)
            await asyncio.sleep(1.0)  # the router and executor learn the instance
            await measure(
                f"{label} warm-up",
                procs,
                sink,
                http,
                url_base + path,
                source.write_key,
                100,
                per_request,
            )
            for rate in RATES:
                await measure(
                    label, procs, sink, http, url_base + path, source.write_key, rate, per_request
                )


def main() -> None:
    """Run the latency benchmark."""
    print(f"bench.latency: {CORES} cores, {SECONDS:g} s per rate, rates {RATES}", flush=True)
    with platform() as (running, endpoints):
        asyncio.run(run(running, endpoints))
