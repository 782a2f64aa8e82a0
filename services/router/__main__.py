"""Run the router: settings → telemetry → NATS → config watch → servers → wait for SIGTERM."""

from __future__ import annotations

from contextlib import AsyncExitStack

import uvloop

from services.common import rpc, telemetry
from services.router.app import start_router
from services.router.settings import RouterSettings


async def main() -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    settings = RouterSettings()
    telemetry.setup_logging(settings.log_level)
    telemetry.setup_tracing("eventfn-router")
    async with AsyncExitStack() as stack:
        await start_router(settings, stack)
        await rpc.wait_for_termination_signal()


if __name__ == "__main__":
    uvloop.run(main())
