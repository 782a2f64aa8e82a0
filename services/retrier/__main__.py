"""Run a retrier process: settings → telemetry → NATS → scheduler → server."""

from __future__ import annotations

from contextlib import AsyncExitStack

import uvloop

from services.common import rpc, telemetry
from services.retrier.app import start_retrier
from services.retrier.settings import RetrierSettings


async def main() -> None:
    """Serve until SIGTERM or SIGINT, then stop consuming and close."""
    settings = RetrierSettings()
    telemetry.setup_logging(settings.log_level)
    telemetry.setup_tracing("eventfn-retrier")
    async with AsyncExitStack() as stack:
        await start_retrier(settings, stack)
        await rpc.wait_for_termination_signal()


if __name__ == "__main__":
    uvloop.run(main())
