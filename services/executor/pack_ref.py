"""A received pack while its events run: what settles it, and its events split out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from opentelemetry import trace
from opentelemetry.context import Context

from services.executor.policy import handler_for


@dataclass(eq=False)  # compared and hashed by identity: one per received pack
class PackRef:
    """A received pack: what to ack, and how many of its events still await an outcome.

    `remaining` is set once, when the dispatcher knows where each event goes; each
    invocation then resolves its own events, so a pack whose events take several paths
    (single handlers and onBatch) is settled when the last of them is.
    """

    settle: Callable[[bool], Awaitable[None]]  # True: ack, False: hand back (nak)
    remaining: int
    count: int = 0  # events in the pack (its Eventfn-Count header)
    attempt: int = 1
    first_attempt_at: str = ""
    history: str = ""  # JSON list of earlier attempts, carried from RETRY through EVENTS
    version: str = ""  # the version a replay pinned (Eventfn-Version), carried to RETRY/DEAD
    trace: Context | None = None  # the event's trace, from the pack's W3C headers
    seq: int = 0  # the pack's EVENTS stream sequence: names this delivery in hand-off ids
    message_ids: tuple[str, ...] = ()  # some of its messageIds (Eventfn-Message-Ids header)
    # Traces of other requests whose events the pack carries (merged by the router).
    links: tuple[Context, ...] = ()
    ok: bool = True

    @property
    def trace_id(self) -> str:
        """Return the W3C trace id of the pack's journey (32 hex digits), or ""."""
        if self.trace is None:
            return ""
        context = trace.get_current_span(self.trace).get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    async def resolve(self, count: int, ok: bool = True) -> None:
        """Mark `count` events as settled; ack (or nak) once all are."""
        self.ok = self.ok and ok
        self.remaining -= count
        if self.remaining == 0:
            await self.settle(self.ok)


def split_pack(body: bytes) -> list[bytes]:
    """Split a pack's JSON array into the encoded events."""
    events = orjson.loads(body)
    if not isinstance(events, list):
        events = [events]
    return [orjson.dumps(e) for e in events]


def split_typed(body: bytes) -> list[tuple[bytes, str | None]]:
    """Split a pack into encoded events, each with the single-event handler its type calls."""
    events = orjson.loads(body)
    if not isinstance(events, list):
        events = [events]
    return [(orjson.dumps(e), handler_for(e)) for e in events]


def join_events(events: list[bytes]) -> bytes:
    """Return the JSON array of encoded events."""
    return b"[" + b",".join(events) + b"]"
