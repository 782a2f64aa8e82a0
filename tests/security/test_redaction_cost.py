"""A tenant's own secret and text made to cost redaction the most: a secret of 3,000 'a's
and a 'b', and 200 events each throwing a message of 'a's. Each position of the text matches
3,000 characters before it fails, so the reply took 24 s to redact while the worker answered
nobody else (its neighbours' invocations waited, the watchdog replaced it). A reply now has a
time budget for redaction: what it reaches past the budget is withheld."""

from __future__ import annotations

import asyncio
import time

from services.runtime import RuntimePool
from services.runtime.redact import compile_secrets, cut_margin, redact_cut
from services.runtime.reply_redaction import REDACTION_BUDGET_S, WITHHELD
from tests.runtime.conftest import invoke
from tests.security.conftest import config

SECRET = "a" * 3000 + "b"
THROWER = """async function onTrack(event, settings) {
  throw new Error('a'.repeat(12000))
}"""


async def test_a_reply_too_costly_to_redact_holds_its_worker_a_bounded_time() -> None:
    async with RuntimePool(config(workers=1)) as pool:
        events = [{"type": "track"}] * 200
        started = time.monotonic()
        costly = asyncio.ensure_future(
            invoke(pool, THROWER, events, settings={"key": SECRET}, secrets=(SECRET,))
        )
        result = await asyncio.wait_for(costly, 30)
        took = time.monotonic() - started
        neighbour = await asyncio.wait_for(
            invoke(pool, "async function onTrack() { return 1 }", key="ins_other:ver:1"), 5
        )
    messages = [o.message for o in result.outcomes]
    assert WITHHELD in messages and all(m == WITHHELD or "a" in (m or "") for m in messages)
    assert took < REDACTION_BUDGET_S + 4, took
    assert neighbour.outcomes[0].error_type is None


def test_cutting_a_long_text_reads_only_what_it_keeps_and_the_margin() -> None:
    # A returned string of 2 M 'a's was searched whole for a match to extend the cut by.
    pattern = compile_secrets([SECRET])
    started = time.monotonic()
    out = redact_cut("a" * 2_000_000, 1000, pattern, margin=cut_margin([SECRET]))
    assert time.monotonic() - started < 5 and out == "a" * 999 + "…"
