"""Run the registry: settings → telemetry → storage → servicer → server → wait for SIGTERM."""

from __future__ import annotations

from contextlib import AsyncExitStack

import uvloop

from services.common import rpc, telemetry
from services.registry.app import start_registry
from services.registry.settings import RegistrySettings


async def main() -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    settings = RegistrySettings()  # type: ignore[call-arg]  # read from the environment
    telemetry.setup_logging(settings.log_level)
    telemetry.setup_tracing("eventfn-registry")
    async with AsyncExitStack() as stack:
        await start_registry(settings, stack)
        await rpc.wait_for_termination_signal()


if __name__ == "__main__":
    uvloop.run(main())
