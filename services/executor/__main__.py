"""Run an executor process: settings → telemetry → NATS/DB → pool → consumer → server."""

from __future__ import annotations

from contextlib import AsyncExitStack

import uvloop

from services.common import rpc, telemetry
from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings


async def main() -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight work and stop."""
    settings = ExecutorSettings()  # type: ignore[call-arg]  # read from the environment
    telemetry.setup_logging(settings.log_level)
    telemetry.setup_tracing("eventfn-executor")
    async with AsyncExitStack() as stack:
        await start_executor(settings, stack)
        await rpc.wait_for_termination_signal()


if __name__ == "__main__":
    uvloop.run(main())
