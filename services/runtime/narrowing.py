"""Narrow a killed multi-event invocation down to its offending event (re-run the rest).

Only an invocation that sent no request yet is run again (else its requests could go out
twice): first carefully, one handler start per crossing, which names an offender that loops
or bombs in its synchronous part; if the offence comes after an await, each half is run
again instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson

from .model import EventOutcome, Invocation, InvocationResult
from .worker_handle import Lost


async def narrow(
    run: Callable[[Invocation, bool], Awaitable[InvocationResult]],
    invocation: Invocation,
    count: int,
    lost: Lost,
    outcome: EventOutcome,
    started: float,
    *,
    careful: bool,
) -> InvocationResult:
    """Give the offender `outcome` and the other events the result of running them again.

    `run(invocation, careful)` runs an invocation; `careful` says whether the lost one was.
    """
    if invocation.batch or count <= 1 or lost.loading:
        return InvocationResult(
            outcomes=[outcome] * count, duration_ms=(time.monotonic() - started) * 1000
        )
    events = orjson.loads(invocation.events)
    if lost.offender is not None and lost.offender < count:
        # The offender is known: it fails alone, the rest run again without it.
        i = lost.offender
        others = events[:i] + events[i + 1 :]
        rest = await run(replace(invocation, events=orjson.dumps(others), count=len(others)), False)
        values = None
        if invocation.trace_bodies:
            values = list(rest.values or [None] * (count - 1))
            values.insert(i, None)
        return replace(
            rest,
            outcomes=[*rest.outcomes[:i], outcome, *rest.outcomes[i:]],
            duration_ms=(time.monotonic() - started) * 1000,
            values=values,
        )
    if lost.sent:
        return InvocationResult(
            outcomes=[outcome] * count, duration_ms=(time.monotonic() - started) * 1000
        )
    if not careful:
        return await run(invocation, True)
    # Still unknown (it stalled after an await): re-run each half.
    mid = count // 2
    parts = await asyncio.gather(
        *(
            run(replace(invocation, events=orjson.dumps(h), count=len(h)), False)
            for h in (events[:mid], events[mid:])
        )
    )
    return InvocationResult(
        outcomes=[o for p in parts for o in p.outcomes],
        logs=[line for p in parts for line in p.logs],
        logs_truncated=any(p.logs_truncated for p in parts),
        requests=[r for p in parts for r in p.requests],
        duration_ms=(time.monotonic() - started) * 1000,
        values=None
        if not invocation.trace_bodies
        else [v for p in parts for v in (p.values or [])],
    )
