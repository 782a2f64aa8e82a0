"""Pipeline benchmark: HTTP → router → executor → a function fetching a local aiohttp sink.

Measured in one run: (a) the raw request rate of an aiohttp client against the same sink
(one event per POST, in this process as the executor's fetches are), and (b) the ingest-only
rate of the same 10,000 events (router alone, nothing consuming). Then 10,000 events end to
end, from the first HTTP request to the last messageId reaching the sink, with an `onTrack`
making one fetch per event and with an `onBatch` (batch 100) making one fetch per batch.
Each is printed as events/s and as ratios to (a) and (b).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack

import orjson
import uvloop

from bench.common import (
    Control,
    Sink,
    client_session,
    concurrent,
    executor_on,
    header,
    http_load,
    in_child,
    line,
    router_on,
    servers,
    start_control,
    start_sink,
    track,
    until_known,
)
from services.common import streams
from services.common.config_watch import ConfigWatcher

EVENTS = 10_000
PER_REQUEST = 100
DEADLINE = 90.0  # seconds an end-to-end run may take before it is reported incomplete
ON_TRACK = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/track', {method: 'POST', body: JSON.stringify(event)})
}
"""
ON_BATCH = """
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/batch', {method: 'POST', body: JSON.stringify(events)})
}
"""


async def raw_sink_rate(sink: Sink, stack: AsyncExitStack) -> float:
    """POST EVENTS single events to the sink with aiohttp, 64 in flight; return requests/s."""
    session = client_session(stack, limit=64)
    bodies = [orjson.dumps(track(i, "raw")) for i in range(EVENTS)]

    async def post(i: int) -> None:
        async with session.post(f"{sink.url}/raw", data=bodies[i]) as resp:
            await resp.read()

    await concurrent(200, 64, post)
    done, elapsed = await concurrent(EVENTS, 64, post, 30)
    sink.ids.clear()
    return done / elapsed


async def end_to_end(
    control: Control,
    sink: Sink,
    pool: ProcessPoolExecutor,
    http: str,
    watchers: tuple[ConfigWatcher, ...],
    code: str,
) -> tuple[float, int]:
    """Send EVENTS events to a new instance running `code`; return (events/s, delivered)."""
    iid = await control.instance(code, sink.url, batch_size=PER_REQUEST, batch_wait_ms=50)
    await until_known(iid, *watchers)
    sink.ids.clear()
    start = time.perf_counter()
    load = await in_child(pool, http_load, http, control.write_key, PER_REQUEST, 100, 8, 60)
    complete = await sink.wait_for(EVENTS, DEADLINE)
    elapsed = time.perf_counter() - start
    delivered = len(sink.ids)
    if load.failures or not complete:
        print(f"    incomplete: {load.failures} requests refused, {delivered} delivered")
    await control.delete_instance(iid)
    await until_known(iid, *watchers, present=False)
    return delivered / elapsed, delivered


async def run() -> None:
    """Start the platform, measure both baselines, then the two end-to-end cases."""
    header(f"bench.pipeline: {EVENTS:,} events HTTP → router → executor → local sink")
    with servers() as srv:
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            sink = await start_sink(stack)
            router = await router_on(control, srv.nats.url, stack)
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)
            http = f"http://127.0.0.1:{router.http_port}"

            # (b) ingest only: the router stores the packs, nothing consumes them yet.
            iid = await control.instance(ON_TRACK, sink.url)
            await until_known(iid, router.watcher)
            ingest = await in_child(
                pool, http_load, http, control.write_key, PER_REQUEST, EVENTS // PER_REQUEST, 8, 60
            )
            await control.delete_instance(iid)
            await until_known(iid, router.watcher, present=False)
            await router.nats.jetstream().purge_stream(streams.EVENTS_STREAM)
            raw = await raw_sink_rate(sink, stack)

            executor = await executor_on(control, srv.nats.url, stack)
            watchers = (router.watcher, executor.watcher)
            single = await end_to_end(control, sink, pool, http, watchers, ON_TRACK)
            batch = await end_to_end(control, sink, pool, http, watchers, ON_BATCH)

            print("  baselines (same run):", flush=True)
            line("(a) raw aiohttp POSTs to the sink, 64 in flight", raw, "requests/s")
            line(
                f"(b) ingest only, HTTP /v1/batch ({PER_REQUEST} per request)",
                ingest.rate,
                "events/s",
            )
            print("  end to end (first request → last messageId at the sink):", flush=True)
            for label, (rate, delivered) in (
                ("onTrack, one fetch per event", single),
                (f"onBatch({PER_REQUEST}), one fetch per batch", batch),
            ):
                line(label, rate, "events/s", raw, "(a) raw sink")
                line(
                    f"  ({delivered:,}/{EVENTS:,} delivered)",
                    rate,
                    "events/s",
                    ingest.rate,
                    "(b) ingest only",
                )


def main() -> None:
    """Run the pipeline benchmark (`python -m bench pipeline`), then the telemetry cost."""
    from bench.pipeline import telemetry

    uvloop.run(run())
    telemetry.main()
