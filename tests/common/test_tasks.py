"""Stopping a background task that loses a cancellation (as Python 3.11's `wait_for` does
when one comes as its wait ends): cancelled once and awaited, it ran on for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from services.common import tasks


async def _loses_the_first_cancellation(lost: list[bool]) -> None:
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(True)


async def test_a_task_that_loses_a_cancellation_is_stopped_all_the_same() -> None:
    lost: list[bool] = []
    task = asyncio.create_task(_loses_the_first_cancellation(lost))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(TimeoutError):  # what `cancel()` then `await task` did
        await asyncio.wait_for(asyncio.shield(task), 0.2)
    assert not task.done() and lost
    await asyncio.wait_for(tasks.stop(task), 5)
    assert task.cancelled()


async def test_a_failed_task_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails(), name="broken-loop")
    with contextlib.suppress(RuntimeError):
        await asyncio.shield(task)
    with caplog.at_level(logging.ERROR, logger="services.common.tasks"):
        await tasks.stop(task)
        await tasks.stop(None)
    assert "broken-loop" in caplog.text and "broken" in caplog.text
