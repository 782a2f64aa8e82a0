"""What tracing and metrics cost the pipeline: 10,000 events onTrack end to end with telemetry
off, with metrics, and with metrics plus tracing sampled at 0.01 and at 1.0 (spans exported
to the platform's own trace store, as `eventfn up` does). Each runs in a fresh process (the
tracer provider is process-wide); rates are printed as ratios to "off", measured in the same
run. Run alone: `python -m bench.pipeline.telemetry`.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack

import uvloop

from bench.common import (
    executor_on,
    line,
    router_on,
    servers,
    start_control,
    start_sink,
)

# What each configuration sets in its child's environment.
CONFIGS = {
    "off": {},
    "metrics": {"BENCH_METRICS": "1"},
    "metrics + tracing 0.01": {"BENCH_METRICS": "1", "BENCH_TRACE_RATIO": "0.01"},
    "metrics + tracing 1.0": {"BENCH_METRICS": "1", "BENCH_TRACE_RATIO": "1.0"},
}


async def measure() -> float:
    """Run the pipeline once under the telemetry set up by `setup()`; return events/s."""
    from bench.pipeline import ON_TRACK, end_to_end

    with servers() as srv:
        setup(srv.nats.url)
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            sink = await start_sink(stack)
            router = await router_on(control, srv.nats.url, stack)
            executor = await executor_on(control, srv.nats.url, stack)
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)
            http = f"http://127.0.0.1:{router.http_port}"
            rate, _ = await end_to_end(
                control, sink, pool, http, (router.watcher, executor.watcher), ON_TRACK
            )
            return rate


def setup(nats_url: str) -> None:
    """Install the telemetry this child process was asked for (before the services start)."""
    if os.environ.get("BENCH_METRICS"):
        for service in ("ROUTER", "EXECUTOR", "REGISTRY", "RETRIER"):
            os.environ[f"EVENTFN_{service}_METRICS_LISTEN"] = "127.0.0.1:0"
    ratio = os.environ.get("BENCH_TRACE_RATIO")
    if ratio:
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = ratio
        from services.common.telemetry import setup_tracing
        from services.common.trace_store import TraceStoreExporter

        setup_tracing("eventfn-bench", [TraceStoreExporter(nats_url)])


def child() -> None:
    """Print one configuration's rate (in a child process)."""
    print(uvloop.run(measure()), flush=True)


def main() -> None:
    """Measure every configuration, each in a fresh process, and print ratios to "off"."""
    print("  telemetry cost (onTrack, 10,000 events; each in a fresh process):", flush=True)
    rates: dict[str, float] = {}
    for label, wanted in CONFIGS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")} | wanted
        for service in ("ROUTER", "EXECUTOR", "REGISTRY", "RETRIER"):
            env[f"EVENTFN_{service}_METRICS_LISTEN"] = ""
        out = subprocess.run(
            [sys.executable, "-c", "from bench.pipeline.telemetry import child; child()"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rates[label] = float(out.stdout.strip().splitlines()[-1])
        line(label, rates[label], "events/s", rates.get("off"), "off")


if __name__ == "__main__":
    main()
