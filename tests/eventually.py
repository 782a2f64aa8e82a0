"""Wait for a state only a poll can see: NATS consumer info, database rows, another process.

Where a test can await a real condition (an asyncio.Condition or Event its own code sets,
like the sinks'), it awaits that instead; `eventually` is for everything else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

DEFAULT_SECONDS = 30.0
DEFAULT_INTERVAL = 0.05
_SHOWN = 500  # characters of the last value a failure message shows


class _Nothing:
    """The last value while the probe has not returned yet (it kept raising, or hangs)."""

    def __repr__(self) -> str:
        return "nothing (it never returned)"


NOTHING = _Nothing()


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    until: Callable[[T], object] = bool,
    seconds: float = DEFAULT_SECONDS,
    interval: float = DEFAULT_INTERVAL,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `probe` (sync or async) every `interval` seconds until it returns a value that
    `until` holds for (by default: a truthy value); return that value.

    `what` names the awaited state for the failure message. When `seconds` have passed (a
    probe that hangs is cut too) raise AssertionError naming `what` and the last value the
    probe returned. An exception of a type in `ignoring` means "not yet" (e.g. a consumer
    not created yet) and counts as the last value; any other exception propagates at once.
    """
    last: object = NOTHING
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            while True:
                try:
                    result = probe()
                    value = cast(T, await result if inspect.isawaitable(result) else result)
                except ignoring as error:
                    last = error
                else:
                    if until(value):
                        return value
                    last = value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():
            raise  # the probe's own TimeoutError, not ours
        shown = repr(last)
        if len(shown) > _SHOWN:
            shown = shown[:_SHOWN] + "..."
        raise AssertionError(f"waited {seconds:g} s for {what}; last seen: {shown}") from None
