"""Ingest benchmark: raw JetStream publish (the ceiling) vs the router's HTTP and gRPC ingest.

Baselines, measured first in the same run against the same embedded NATS (file storage,
`sync_interval: always`): pipelined `publish_async` of packs of 100 events and of one event
per message, to the instance's EVENTS subject with a unique `Nats-Msg-Id` as the router sends.
Then the router (in this process) under load from a child process: HTTP `/v1/batch` (100 events
per request) and `/v1/track` with aiohttp, gRPC `Ingest` and `IngestStream` (100 per request).
Prints events/s and each as a ratio to its baseline, and the router's CPU per event (this
process's, the load generator being a child).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack

import nats
import orjson
import uvloop

from bench.common import (
    Load,
    grpc_load,
    header,
    http_load,
    in_child,
    line,
    router_on,
    servers,
    start_control,
    track,
)
from services.common import streams
from services.common.service import tune_gc

PACK = 100
SECONDS = 20.0  # cap on each timed phase
CODE = "async function onTrack(event, settings) {}"


async def raw_publish(nats_url: str, subject: str, per_message: int, messages: int) -> float:
    """Publish `messages` messages of `per_message` events, pipelined; return events/s."""
    run = uuid.uuid4().hex[:8]
    bodies = [
        orjson.dumps([track(m * per_message + i, run) for i in range(per_message)])
        for m in range(messages)
    ]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.publish(subject, bodies[0], headers={streams.MSG_ID: f"{run}-warm"})
        deadline = time.monotonic() + SECONDS
        start = time.perf_counter()
        futures = []
        for m, body in enumerate(bodies):
            if time.monotonic() > deadline:
                break
            futures.append(
                await js.publish_async(subject, body, headers={streams.MSG_ID: f"{run}-{m}"})
            )
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
    finally:
        await nc.close()
    return len(futures) * per_message / elapsed


async def _measured(run: Awaitable[Load]) -> tuple[Load, float]:
    """Await a load and return it with this process's CPU per event meanwhile (µs): the
    router's, steadier than events/s on a shared machine (the load runs in a child)."""
    started = time.process_time()
    load = await run
    return load, (time.process_time() - started) / max(load.events, 1) * 1e6


def _show(label: str, measured: tuple[Load, float], baseline: float, of: str) -> None:
    load, cpu = measured
    line(label, load.rate, "events/s", baseline, of)
    print(f"    router CPU {cpu:.2f} µs/event", flush=True)
    if load.failures:
        print(f"    ({load.failures} requests refused)", flush=True)


async def run() -> None:
    """Start the servers, measure the baselines, then the router."""
    header("bench.ingest: router ingest vs raw JetStream publish")
    with servers() as srv:
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            iid = await control.instance(CODE, "http://127.0.0.1:9/")
            subject = streams.events_subject(control.workspace_id, iid)
            router = await router_on(control, srv.nats.url, stack)
            await router.watcher.wait_until(lambda v: iid in v.instances)
            tune_gc()  # as the router's main does once it has started
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)

            packs = await raw_publish(srv.nats.url, subject, PACK, 6000)
            single = await raw_publish(srv.nats.url, subject, 1, 15_000)
            print("  baselines (pipelined publish_async, this process):", flush=True)
            line(f"raw JetStream publish, packs of {PACK}", packs, "events/s")
            line("raw JetStream publish, 1 event per message", single, "events/s")

            http = f"http://127.0.0.1:{router.http_port}"
            addr = f"127.0.0.1:{router.grpc_port}"
            key = control.write_key
            print("  router (load from a child process):", flush=True)
            batch = await _measured(in_child(pool, http_load, http, key, PACK, 5000, 32, SECONDS))
            _show(f"HTTP /v1/batch ({PACK} per request, 32 conns)", batch, packs, "raw packs")
            one = await _measured(in_child(pool, http_load, http, key, 1, 15_000, 64, SECONDS))
            _show("HTTP /v1/track (64 conns)", one, single, "raw 1-event publish")
            unary = await _measured(
                in_child(pool, grpc_load, addr, key, PACK, 5000, 16, SECONDS, False)
            )
            _show(f"gRPC Ingest ({PACK} per call, 16 in flight)", unary, packs, "raw packs")
            streamed = await _measured(
                in_child(pool, grpc_load, addr, key, PACK, 5000, 4, SECONDS, True)
            )
            _show(
                f"gRPC IngestStream ({PACK} per message, 4 streams)", streamed, packs, "raw packs"
            )
            print(f"  router stats: {router.ingestor.stats}", flush=True)


def main() -> None:
    """Run the ingest benchmark (`python -m bench ingest`)."""
    uvloop.run(run())
