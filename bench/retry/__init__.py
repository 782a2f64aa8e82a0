"""Retry benchmark: a retry storm drains with zero loss; the retrier's memory stays flat.

1. Storm: 10,000 events to a function whose destination answers 503 (the function throws
   RetryError) for a while, then recovers. Short policy by settings (base 0.05 s, cap 1 s,
   window 120 s). Prints the failed attempts, the drain time after recovery, and checks that
   every messageId was delivered (none dead-lettered). Baseline in the same run: the same
   10,000 events to a healthy destination (no retry).
2. Memory: a retrier in its own process (`python -m services.retrier`) holds 100,000 RETRY
   messages published directly in the executor's format with a long delay (held in JetStream
   by `nak(delay)`); its RSS is sampled as the pending count grows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack

import uvloop

from bench.common import (
    FREE_PORT,
    SERVICE,
    Control,
    Sink,
    executor_on,
    header,
    http_load,
    in_child,
    line,
    router_on,
    servers,
    start_control,
    start_sink,
    until_known,
)
from bench.retry.memory import held_memory
from services.devtools.embedded import EmbeddedNats
from services.retrier.app import start_retrier
from services.retrier.settings import RetrierSettings

EVENTS = 10_000
PER_REQUEST = 100
FAIL_SECONDS = 8.0  # the destination keeps failing this long after every event failed once
DRAIN_DEADLINE = 120.0
CODE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint + '/track', {
    method: 'POST', body: JSON.stringify(event)
  })
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""


async def deliver(
    control: Control, sink: Sink, pool: ProcessPoolExecutor, http: str, run: str
) -> tuple[float, float, int]:
    """Send EVENTS events; fail until all failed once + FAIL_SECONDS.

    Return (seconds failing, seconds from recovery to all delivered, failed requests).
    """
    requests = EVENTS // PER_REQUEST
    start = time.perf_counter()
    load = await in_child(
        pool, http_load, http, control.write_key, PER_REQUEST, requests, 8, 60, run
    )
    if load.failures:
        print(f"    {load.failures} ingest requests refused", flush=True)
    failing = 0.0
    if sink.status >= 400:
        await sink.wait_until(lambda: sink.requests >= EVENTS, 60)
        await asyncio.sleep(FAIL_SECONDS)
        sink.status = 200
        failing = time.perf_counter() - start
    failed = sink.requests
    recovered = time.perf_counter()
    complete = await sink.wait_for(EVENTS, DRAIN_DEADLINE)
    if not complete:
        print(f"    incomplete after {DRAIN_DEADLINE:.0f} s: {len(sink.ids):,} delivered")
    return failing, time.perf_counter() - recovered, failed


async def storm(srv_nats: EmbeddedNats, control: Control, pool: ProcessPoolExecutor) -> None:
    """Run the healthy baseline, then the storm, in-process; print the figures."""
    async with AsyncExitStack() as stack:
        sink = await start_sink(stack)
        router = await router_on(control, srv_nats.url, stack)
        executor = await executor_on(control, srv_nats.url, stack)
        retrier = await start_retrier(
            RetrierSettings(
                retrier_listen=FREE_PORT,
                retrier_metrics_listen=FREE_PORT,
                nats_url=srv_nats.url,
                registry_addr=control.addr,
                service_token=SERVICE,
                retry_base_seconds=0.05,
                retry_cap_seconds=1.0,
                retry_window_seconds=120.0,
                log_level="WARNING",
            ),
            stack,
        )
        iid = await control.instance(CODE, sink.url, batch_size=PER_REQUEST, batch_wait_ms=50)
        await until_known(iid, router.watcher, executor.watcher, retrier.watcher)
        http = f"http://127.0.0.1:{router.http_port}"

        _, healthy, _ = await deliver(control, sink, pool, http, "healthy")
        healthy_ok = len(sink.ids)

        sink.ids.clear()
        sink.requests = 0
        sink.status = 503
        failing, drain, failed_requests = await deliver(control, sink, pool, http, "storm")
        attempts = failed_requests
        expected = {f"storm-{i}" for i in range(EVENTS)}
        missing = len(expected - sink.ids)
        counts = retrier.scheduler.counts

        print("  storm (in-process router, executor, retrier; destination 503 then 200):")
        line("baseline: healthy destination, send → all delivered", healthy * 1000, "ms")
        print(f"    ({healthy_ok:,}/{EVENTS:,} delivered)")
        line(
            f"failing phase (send, then {FAIL_SECONDS:.0f} s after all failed once)",
            failing * 1000,
            "ms",
        )
        line("destination requests in the failing phase", attempts, "requests")
        line("drain: recovery → every messageId delivered", drain * 1000, "ms")
        print(f"    = {drain / healthy:.2f} × the healthy delivery time", flush=True)
        line("drain rate", EVENTS / drain, "events/s", EVENTS / healthy, "healthy rate")
        print(
            f"    loss: {missing} of {EVENTS:,} messageIds missing; retrier: "
            f"{counts['republished']:,} republished, {counts['held']:,} held, "
            f"{counts['dead']} dead, {counts['discarded']} discarded",
            flush=True,
        )


async def run() -> None:
    """Start the servers and the registry; run the storm, then the memory check."""
    header("bench.retry: retry storm drain and retrier memory with pending retries")
    with servers() as srv:
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)
            await storm(srv.nats, control, pool)
            await held_memory(srv, control)


def main() -> None:
    """Run the retry benchmark (`python -m bench retry`)."""
    uvloop.run(run())
