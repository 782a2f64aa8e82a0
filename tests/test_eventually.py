"""The tests' one polling helper: returns what it waited for, or fails saying what and why."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from tests.eventually import eventually


async def test_returns_the_first_truthy_value_of_a_sync_probe() -> None:
    calls = itertools.count()
    values = iter([None, 0, [], "", {"rows": 3}, {"rows": 4}])
    got = await eventually(lambda: (next(calls), next(values))[1], "rows", interval=0)
    assert got == {"rows": 3}
    assert next(calls) == 5, "the probe is not called again once it held"


async def test_awaits_an_async_probe() -> None:
    seen: list[int] = []

    async def probe() -> int:
        await asyncio.sleep(0)
        seen.append(len(seen))
        return len(seen) if len(seen) == 3 else 0

    assert await eventually(probe, "the third call", interval=0) == 3
    assert seen == [0, 1, 2]


async def test_a_timeout_names_what_was_awaited_and_the_last_value() -> None:
    values = itertools.count()
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        await eventually(lambda: next(values) > 1e9 and "never", "a big number", seconds=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    message = str(failure.value)
    assert message.startswith("waited 0.3 s for a big number; last seen: False"), message


async def test_until_decides_and_the_message_shows_the_whole_last_value() -> None:
    rows = iter(range(100))
    got = await eventually(lambda: {"rows": next(rows)}, "3 rows", until=lambda r: r["rows"] == 3)
    assert got == {"rows": 3}
    with pytest.raises(AssertionError, match=r"for 200 rows; last seen: \{'rows': \d+\}$"):
        await eventually(
            lambda: {"rows": next(rows)}, "200 rows", until=lambda r: r["rows"] == 200, seconds=0.2
        )


async def test_a_hanging_probe_is_cut_at_the_timeout() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waited 0\.2 s for a reply; last seen: nothing"):
        await eventually(hangs, "a reply", seconds=0.2)
    assert time.monotonic() - started < 2


def raising(error: BaseException) -> Callable[[], object]:
    """Return a probe that always raises `error`."""

    def probe() -> object:
        raise error

    return probe


async def test_ignored_errors_mean_not_yet_and_show_as_the_last_value() -> None:
    attempts = itertools.count()

    def probe() -> str:
        if next(attempts) < 3:
            raise LookupError("consumer not found")
        return "found"

    assert await eventually(probe, "a consumer", interval=0, ignoring=(LookupError,)) == "found"
    with pytest.raises(AssertionError, match=r"last seen: LookupError\('consumer not found'\)"):
        await eventually(
            raising(LookupError("consumer not found")),
            "a consumer",
            seconds=0.2,
            ignoring=(LookupError,),
        )


@pytest.mark.parametrize("error", [ValueError("broken probe"), TimeoutError("probe's own")])
async def test_other_errors_propagate_at_once(error: Exception) -> None:
    started = time.monotonic()
    with pytest.raises(type(error), match=str(error)):
        await eventually(raising(error), "anything", seconds=30)
    assert time.monotonic() - started < 1


async def test_a_long_last_value_is_shortened() -> None:
    with pytest.raises(AssertionError) as failure:
        await eventually(
            raising(LookupError("x" * 10_000)),
            "a short error",
            seconds=0.1,
            ignoring=(LookupError,),
        )
    assert 500 < len(str(failure.value)) < 600
