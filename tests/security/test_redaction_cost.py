"""A tenant's own secret and text made to cost redaction the most: a secret of 1,023 'a's
and a 'b' (longer ones are matched in chunks of 1,024), and 200 events each throwing a message
of 'a's. Each position of the text matches 1,023 characters before it fails, so the reply took
seconds to redact while the worker answered nobody else (its neighbours' invocations waited,
the watchdog replaced it). A reply now has a time budget for redaction: what it reaches past
the budget is withheld."""

from __future__ import annotations

import asyncio
import random
import string
import time

from services.runtime import RuntimePool
from services.runtime.redact import REDACTED, compile_secrets, cut_margin, redact, redact_cut
from services.runtime.reply_redaction import REDACTION_BUDGET_S, WITHHELD
from tests.runtime.conftest import invoke
from tests.security.conftest import config

SECRET = "a" * 1023 + "b"
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
    # (And a secret of 50,000 'a's and a 'b' costs no more: it is matched in chunks.)
    pattern = compile_secrets([SECRET])
    started = time.monotonic()
    out = redact_cut("a" * 2_000_000, 1000, pattern, margin=cut_margin([SECRET]))
    assert time.monotonic() - started < 5 and out == "a" * 999 + "…"


def test_a_long_secret_costs_no_more_than_its_chunks() -> None:
    # A secret of 50,000 'a's and a 'b' made each place of a text of 'a's match 50,000
    # characters before failing: 2 s for a 64 KB log, and 2.3 s to build its pattern.
    secret = "a" * 50_000 + "b"
    started = time.monotonic()
    pattern = compile_secrets([secret])
    assert redact("x" + secret + "y", pattern).replace(REDACTED, "") == "xy"
    redact("a" * 68_000, pattern)
    assert time.monotonic() - started < 2


async def test_a_long_secret_being_compiled_holds_up_no_neighbour() -> None:
    # Building the pattern of 40,000 characters of secret takes a second or more; in the
    # worker's own thread it held every other invocation on the worker meanwhile.
    secret = "".join(random.choices(string.ascii_letters + string.digits, k=40_000))
    async with RuntimePool(config(workers=1)) as pool:
        done: list[str] = []

        async def run(name: str, code: str, **kwargs: object) -> None:
            await invoke(pool, code, key=f"ins_{name}:ver:1", **kwargs)  # type: ignore[arg-type]
            done.append(name)

        costly = asyncio.ensure_future(
            run("costly", "async function onTrack() {}", settings={"k": secret}, secrets=(secret,))
        )
        await asyncio.sleep(0.2)  # its reply is being redacted
        await run("neighbour", "async function onTrack() {}")
        await costly
    assert done == ["neighbour", "costly"]
