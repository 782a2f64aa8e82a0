"""Ending a background task for good."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# How long a cancelled task is given before it is cancelled again, and in all.
RECANCEL_SECONDS = 0.5
STOP_SECONDS = 10.0


async def stop(task: asyncio.Task[object] | None) -> None:
    """Cancel a task and wait until it has ended, cancelling it again while it runs on.

    Python 3.11's `wait_for` loses a cancellation that comes as its wait ends (nats-py waits
    with it under every publish and flush): the task goes on, and a plain `cancel()` then
    `await task` waited for ever (an executor's shutdown hung on its consumer's heartbeat).
    A task that had failed is logged, not raised: it was told to stop. One that swallows
    every cancellation is left running after STOP_SECONDS, logged (shutdown goes on).
    """
    if task is None:
        return
    deadline = asyncio.get_running_loop().time() + STOP_SECONDS
    while not task.done():
        if asyncio.get_running_loop().time() > deadline:
            log.error("task %s did not stop in %.0f s; left running", task.get_name(), STOP_SECONDS)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("task %s had failed: %r", task.get_name(), error)
