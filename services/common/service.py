"""One service process: settings → telemetry → the service's wiring → wait for SIGTERM → stop.

Every service's `__main__` is `run_service(name, SettingsClass, start)`, where `start` wires
storage, servicers and servers into an `AsyncExitStack` that closes them in reverse order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

import uvloop

from services.common import rpc, telemetry
from services.common.settings import CommonSettings, DataPlaneSettings
from services.common.trace_store import TraceStoreExporter

S = TypeVar("S", bound=CommonSettings)


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
        await rpc.wait_for_termination_signal()


def run_service(
    name: str, settings_type: type[S], start: Callable[[S, AsyncExitStack], Awaitable[object]]
) -> None:
    """Run a service process on uvloop (its entry point)."""
    uvloop.run(serve(name, settings_type, start))
