"""One service process: settings → telemetry → the service's wiring → wait for SIGTERM → stop.

Every service's `__main__` is `run_service(name, SettingsClass, start)`, where `start` wires
storage, servicers and servers into an `AsyncExitStack` that closes them in reverse order.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

import uvloop

from services.common import rpc, telemetry
from services.common.settings import CommonSettings, DataPlaneSettings
from services.common.trace_store import TraceStoreExporter

S = TypeVar("S", bound=CommonSettings)
# Collect the youngest generation every this many allocations net (CPython's default: 700).
# A service allocates thousands of short-lived objects per request (parsed JSON, futures,
# spans) that reference counting frees; at 700 the collector ran every few requests and
# walked them anyway (≈ 20 % of the router's CPU on /v1/batch, bench/ingest).
YOUNG_GENERATION_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up built (no collection walks it again) and collect less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


async def serve(
    name: str, settings_type: type[S], start: Callable[[S, AsyncExitStack], Awaitable[object]]
) -> None:
    """Read the settings, start the service, serve until SIGTERM or SIGINT, then stop it."""
    settings = settings_type()
    telemetry.setup_logging(settings.log_level, settings.log_format)
    exporters = []
    if isinstance(settings, DataPlaneSettings) and settings.trace_store:
        exporters.append(TraceStoreExporter(settings.nats_url, settings.trace_retention_seconds))
    telemetry.setup_tracing(name, exporters)
    async with AsyncExitStack() as stack:
        await start(settings, stack)
        tune_gc()
        await rpc.wait_for_termination_signal()


def run_service(
    name: str, settings_type: type[S], start: Callable[[S, AsyncExitStack], Awaitable[object]]
) -> None:
    """Run a service process on uvloop (its entry point)."""
    uvloop.run(serve(name, settings_type, start))
