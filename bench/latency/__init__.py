"""Latency and CPU per event on the whole platform as `eventfn up` runs it (one process per
service, embedded PostgreSQL and NATS), at fixed open-loop rates.

Drives single-event `/v1/track` requests into an onTrack making one fetch, and `/v1/batch`
requests of 100 into an onBatch making one fetch per call, to a local sink. Prints, per rate:
sink-side latency p50/p99/p99.9 (send → the sink has the event), delivered events/s, events
per JetStream message (the router coalesces concurrent requests; every message costs an
fsync, a delivery and an executor pass), and CPU µs per event of each process read from /proc
(steadier than wall time on a shared machine).
The load generator runs in a child process and sends each rate for a second before the
measured part (so the connections a rate needs are open, as a steady client's are); its
CPU and the sink's are printed apart — they share the machine with the platform — and serve
as the same-run baseline: a fixed amount of work per event (an HTTP client request and an
HTTP server answer, aiohttp), so the platform's CPU as a multiple of it moves with what the
platform does, not with how busy the shared machine is.
BENCH_SECONDS sets each rate's duration (default 8), BENCH_RATES the single-event rates
(default "100,500,1000,2000" events/s), BENCH_BATCH_RATES the batch rates (default
"2000,10000,20000,40000" events/s: 20 to 400 requests of 100 per second).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import grpc
import nats
import orjson
import psutil
from google.protobuf import struct_pb2

from bench.common import CORES, auth, instance_fields
from bench.platform import (
    Platform,
    Processes,
    Sink,
    cpu_seconds,
    platform,
    processes,
    start_sink,
)
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common import streams

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
WARM_SECONDS = 1.0
RATES = tuple(int(r) for r in os.environ.get("BENCH_RATES", "100,500,1000,2000").split(","))
BATCH_RATES = tuple(
    int(r) for r in os.environ.get("BENCH_BATCH_RATES", "2000,10000,20000,40000").split(",")
)
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


def drive(url: str, write_key: str, rate: int, per_request: int, run: str) -> int:
    """Send `rate` events/s open-loop (no request waits for another), in a child process.

    First WARM_SECONDS at the rate whose events carry no send time (the client opens the
    connections the rate needs; the sink does not count them), then SECONDS measured.
    Returns how many measured events were sent.
    """
    import uvloop

    return uvloop.run(_drive(url, write_key, rate, per_request, run))


async def _drive(url: str, write_key: str, rate: int, per_request: int, run: str) -> int:
    warm = int(rate * WARM_SECONDS / per_request)
    requests = warm + int(rate * SECONDS / per_request)
    interval = per_request / rate
    headers = {
        "Authorization": aiohttp.BasicAuth(write_key, "").encode(),
        "Content-Type": "application/json",
    }
    tasks = []
    gc.freeze()  # what exists now lives for the whole run: no collection walks it

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        properties: dict[str, int] = {} if i < warm else {"sent_ns": time.time_ns()}
        events = [
            {
                "type": "track",
                "userId": "u",
                "event": "Latency",
                "messageId": f"{run}-{i}-{j}",
                "properties": properties,
            }
            for j in range(per_request)
        ]
        body = orjson.dumps(events[0] if per_request == 1 else {"batch": events})
        async with http.post(url, data=body, headers=headers) as resp:
            # Read the answer, as a client does: one left unread closes the connection.
            answer = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {answer!r}")

    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.perf_counter()
        for i in range(requests):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(http, i))
            tasks.append(task)
        await asyncio.gather(*tasks)
    return (requests - warm) * per_request


async def measure(
    label: str,
    procs: Processes,
    sink: Sink,
    pool: ProcessPoolExecutor,
    url: str,
    write_key: str,
    rate: int,
    per_request: int,
    stored: Callable[[], Awaitable[int]],
) -> None:
    sink.reset()
    loop = asyncio.get_running_loop()
    sending = loop.run_in_executor(
        pool, drive, url, write_key, rate, per_request, uuid.uuid4().hex[:6]
    )
    async with asyncio.timeout(WARM_SECONDS + 60):
        await sink.first.wait()  # the warm-up is over: the first measured event arrived
    before = procs.sample()
    messages_before = await stored()
    bench_before = cpu_seconds(os.getpid()) + _children_cpu(pool)
    started = time.perf_counter()
    sent = await sending
    if not await sink.wait_until(lambda: len(sink.latencies) >= sent, 120):
        raise TimeoutError(f"{len(sink.latencies)} of {sent} events reached the sink in 120 s")
    elapsed = time.perf_counter() - started
    after = procs.sample()
    messages = await stored() - messages_before
    lat = sorted(sink.latencies)
    q = statistics.quantiles(lat, n=1000)
    cpu = {role: (after[role] - before[role]) / sent * 1e6 for role in after}
    bench = (cpu_seconds(os.getpid()) + _children_cpu(pool) - bench_before) / sent * 1e6
    print(
        f"{label} {rate:>6}/s: p50 {q[499]:7.1f} ms  p99 {q[989]:7.1f} ms  p99.9 {q[998]:7.1f} ms"
        f"  delivered {sent / elapsed:7.0f}/s  {sent / max(messages, 1):5.1f} events/message"
        "  CPU µs/event: "
        + "  ".join(f"{role} {v:.0f}" for role, v in cpu.items())
        + f"  (all {sum(cpu.values()):.0f}; load generator and sink {bench:.0f}:"
        f" platform = {sum(cpu.values()) / bench:.2f}× it)",
        flush=True,
    )


def _children_cpu(pool: ProcessPoolExecutor) -> float:
    """CPU seconds of the pool's (load generator's) processes."""
    return sum(
        sum(psutil.Process(pid).cpu_times()[:2])
        for pid in pool._processes  # the pool keeps its worker processes here
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
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        stack.callback(pool.shutdown)
        nc = await nats.connect(endpoints["nats"])
        stack.push_async_callback(nc.close)
        js = nc.jetstream()

        async def stored() -> int:
            """JetStream messages the EVENTS stream has taken so far."""
            return (await js.stream_info(streams.EVENTS_STREAM)).state.last_seq

        for label, code, per_request, path, rates, options in (
            ("single /v1/track", SINGLE, 1, "/v1/track", RATES, {}),
            (
                "batch  /v1/batch",
                BATCH,
                100,
                "/v1/batch",
                BATCH_RATES,
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
            for rate in rates:
                await measure(
                    label,
                    procs,
                    sink,
                    pool,
                    url_base + path,
                    source.write_key,
                    rate,
                    per_request,
                    stored,
                )


def main() -> None:
    """Run the latency benchmark."""
    print(
        f"bench.latency: {CORES} cores, {SECONDS:g} s per rate, rates {RATES} (single), "
        f"{BATCH_RATES} (batches of 100)",
        flush=True,
    )
    with platform() as (running, endpoints):
        asyncio.run(run(running, endpoints))
