"""Ingest benchmark: raw JetStream publish (the ceiling) vs the router's HTTP and gRPC ingest.

Baselines, against the same embedded NATS (file storage, `sync_interval: always`): pipelined
`publish_async` of packs of 100 events or of one event per message, to the instance's EVENTS
subject with a unique `Nats-Msg-Id` as the router sends. The router (in this process) runs
under load from a child process: HTTP `/v1/batch` (100 events per request) and `/v1/track`
with aiohttp, gRPC `Ingest` and `IngestStream` (100 per request). Each load's baseline is
measured right before it (a shared machine's speed moves within a run: one baseline for all
loads compared the last ones with another moment's machine). Prints events/s, each as a ratio
to its baseline, and the CPU per event of the router (this process), of the load generator
(a child) and of the NATS server, with what the machine's cores could carry at that cost: on
one machine, what the load generator spends the router does not get (the baselines' CPU per
event too, of their publisher and of the NATS server). BENCH_ROUNDS (default 1) repeats the
loads and prints each ratio's median too. Then the router tier as deployed: the 100-event
loads again, each spread over two router processes (`replicas.py`; compose.yaml and the
manifests run two replicas), against a baseline measured right before each. Last, the floors:
the same gRPC and HTTP loads against servers that answer at once (`floors.py`), beside the
router's CPU per request under each.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import nats
import orjson
import uvloop

from bench.common import (
    CORES,
    Control,
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
from bench.ingest.floors import floor_loads, start_floors
from bench.ingest.replicas import Replica, spread, start_replicas
from bench.platform import cpu_seconds
from services.common import streams
from services.common.service import tune_gc

PACK = 100
SECONDS = 20.0  # cap on each timed phase
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
CODE = "async function onTrack(event, settings) {}"
BATCH = f"HTTP /v1/batch ({PACK} per request, 32 conns)"
UNARY = f"gRPC Ingest ({PACK} per call, 16 in flight)"
STREAM = f"gRPC IngestStream ({PACK} per message, 4 streams)"
# Router processes of the tier measured last: the replicas compose.yaml and the manifests run.
REPLICAS = 2


async def raw_publish(nats_url: str, subject: str, per_message: int, messages: int) -> Load:
    """Publish `messages` messages of `per_message` events, pipelined (with this process's
    CPU meanwhile: the publisher's)."""
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
        start, cpu = time.perf_counter(), time.process_time()
        futures = []
        for m, body in enumerate(bodies):
            if time.monotonic() > deadline:
                break
            futures.append(
                await js.publish_async(subject, body, headers={streams.MSG_ID: f"{run}-{m}"})
            )
        await asyncio.gather(*futures)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await nc.close()
    return Load(len(futures) * per_message, 0, elapsed, cpu)


@dataclass(frozen=True)
class Measured:
    """A load and the CPU µs per event it cost each process on the machine."""

    load: Load
    router: float
    generator: float  # the load-generating child's
    nats: float

    @property
    def machine(self) -> float:
        """All three together: what the machine spent per event."""
        return self.router + self.generator + self.nats


async def _measured(run: Awaitable[Load], nats_pid: int) -> Measured:
    """Await a load; return it with the CPU per event meanwhile of the router (this process,
    steadier than events/s on a shared machine), the load generator and the NATS server."""
    started, nats_started = time.process_time(), cpu_seconds(nats_pid)
    load = await run
    per_event = 1e6 / max(load.events, 1)
    return Measured(
        load,
        (time.process_time() - started) * per_event,
        load.cpu * per_event,
        (cpu_seconds(nats_pid) - nats_started) * per_event,
    )


def _show(label: str, measured: Measured, baseline: float, of: str) -> None:
    load = measured.load
    line(label, load.rate, "events/s", baseline, of)
    print(
        f"    CPU µs/event: router {measured.router:.2f}, load generator "
        f"{measured.generator:.2f}, nats-server {measured.nats:.2f}; {measured.machine:.2f} in "
        f"all ({CORES} cores at that: {CORES * 1e6 / measured.machine:,.0f} events/s)",
        flush=True,
    )
    if load.failures:
        print(f"    ({load.failures} requests refused)", flush=True)


async def _baseline(
    nats_url: str, subject: str, per_message: int, nats_pid: int
) -> tuple[float, str]:
    """Measure and print the raw publish a load is compared with; return its events/s and
    what it is."""
    raw = await _measured(
        raw_publish(nats_url, subject, per_message, 6000 if per_message > 1 else 15_000),
        nats_pid,
    )
    of = f"raw packs of {PACK}" if per_message > 1 else "raw 1-event publish"
    line(f"baseline: {of}", raw.load.rate, "events/s")
    # The publisher runs in this process: its timed CPU is the load's own.
    print(
        f"    CPU µs/event: publisher {raw.generator:.2f}, nats-server {raw.nats:.2f}",
        flush=True,
    )
    return raw.load.rate, of


def _medians(ratios: dict[str, list[float]]) -> None:
    if ROUNDS > 1:
        print("  median ratio to the baseline measured before each load:", flush=True)
        for label, values in ratios.items():
            print(f"  {label:<52} {statistics.median(values):6.2f} ×", flush=True)


async def _tier(
    nats_url: str, subject: str, control: Control, nats_pid: int, stack: AsyncExitStack
) -> None:
    """The 100-event loads again, spread over REPLICAS router processes."""
    print(
        f"  router tier: {REPLICAS} router processes (the replicas compose.yaml and the "
        "manifests run), each load split among them:",
        flush=True,
    )
    replicas = await start_replicas(control, nats_url, REPLICAS, stack)
    pool = ProcessPoolExecutor(REPLICAS, mp_context=multiprocessing.get_context("spawn"))
    stack.callback(pool.shutdown)
    key = control.write_key
    loads: list[tuple[str, Callable[[Replica], tuple[Callable[..., Load], tuple[Any, ...]]]]] = [
        (BATCH, lambda r: (http_load, (r.http_url, key, PACK, 5000, 32 // REPLICAS, SECONDS))),
        (
            UNARY,
            lambda r: (grpc_load, (r.grpc_addr, key, PACK, 5000, 16 // REPLICAS, SECONDS, False)),
        ),
        (
            STREAM,
            lambda r: (
                grpc_load,
                (r.grpc_addr, key, PACK, 5000, max(1, 4 // REPLICAS), SECONDS, True),
            ),
        ),
    ]
    ratios: dict[str, list[float]] = {label: [] for label, _ in loads}
    for round_ in range(ROUNDS):
        if ROUNDS > 1:
            print(f"  round {round_ + 1} of {ROUNDS}:", flush=True)
        for label, load in loads:
            baseline, of = await _baseline(nats_url, subject, PACK, nats_pid)
            tier = await spread(pool, replicas, load, nats_pid)
            line(f"{REPLICAS} routers: {label}", tier.rate, "events/s", baseline, of)
            print(
                "    CPU µs/event: routers "
                + " + ".join(f"{cpu:.2f}" for cpu in tier.routers)
                + f", load generators {tier.generators:.2f}, nats-server {tier.nats:.2f}; "
                f"{tier.machine:.2f} in all ({CORES} cores at that: "
                f"{CORES * 1e6 / tier.machine:,.0f} events/s)",
                flush=True,
            )
            if tier.failures:
                print(f"    ({tier.failures} requests refused)", flush=True)
            ratios[label].append(tier.rate / baseline)
    _medians(ratios)


async def run() -> None:
    """Start the servers, then measure each load of the router after its baseline."""
    header("bench.ingest: router ingest vs raw JetStream publish")
    with servers() as srv:
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            iid = await control.instance(CODE, "http://127.0.0.1:9/")
            subject = streams.events_subject(control.workspace_id, iid)
            router = await router_on(control, srv.nats.url, stack)
            await router.watcher.wait_until(lambda v: iid in v.instances)
            tune_gc()  # as the router's main does once it has started
            nats_pid = srv.nats.pid
            assert nats_pid is not None
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)

            http = f"http://127.0.0.1:{router.http_port}"
            addr = f"127.0.0.1:{router.grpc_port}"
            key = control.write_key
            loads: list[tuple[str, int, Callable[[], Awaitable[Load]]]] = [
                (
                    BATCH,
                    PACK,
                    lambda: in_child(pool, http_load, http, key, PACK, 5000, 32, SECONDS),
                ),
                (
                    "HTTP /v1/track (64 conns)",
                    1,
                    lambda: in_child(pool, http_load, http, key, 1, 15_000, 64, SECONDS),
                ),
                (
                    UNARY,
                    PACK,
                    lambda: in_child(pool, grpc_load, addr, key, PACK, 5000, 16, SECONDS, False),
                ),
                (
                    STREAM,
                    PACK,
                    lambda: in_child(pool, grpc_load, addr, key, PACK, 5000, 4, SECONDS, True),
                ),
            ]
            ratios: dict[str, list[float]] = {label: [] for label, _, _ in loads}
            per_request: dict[str, list[float]] = {label: [] for label, _, _ in loads}
            for round_ in range(ROUNDS):
                if ROUNDS > 1:
                    print(f"  round {round_ + 1} of {ROUNDS}:", flush=True)
                for label, per_message, load in loads:
                    baseline, of = await _baseline(srv.nats.url, subject, per_message, nats_pid)
                    measured = await _measured(load(), nats_pid)
                    _show(label, measured, baseline, of)
                    ratios[label].append(measured.load.rate / baseline)
                    per_request[label].append(measured.router * per_message)
            _medians(ratios)
            print(f"  router stats: {router.ingestor.stats}", flush=True)
            await _tier(srv.nats.url, subject, control, nats_pid, stack)
            grpc_addr, http_url = await start_floors(PACK, stack)
            print(
                f"  floors: the servers alone, answering {PACK}-event requests at once "
                "(CPU per request of the server and of the load generator; the router's under "
                "the same load, median)",
                flush=True,
            )
            floors = floor_loads(pool, grpc_addr, http_url, PACK, SECONDS)
            for (name, load), label in zip(floors, (UNARY, STREAM, BATCH), strict=True):
                floor = await _measured(load(), nats_pid)
                router_cpu = statistics.median(per_request[label])
                print(
                    f"  {name:<24} {floor.load.rate / PACK:>8,.0f} requests/s   server "
                    f"{floor.router * PACK:5.0f} µs   load generator "
                    f"{floor.generator * PACK:5.0f} µs   (router {router_cpu:5.0f} µs)",
                    flush=True,
                )


def main() -> None:
    """Run the ingest benchmark (`python -m bench ingest`)."""
    uvloop.run(run())
