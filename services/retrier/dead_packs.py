"""Dead letters as stored: a DEAD pack, its letters, and the ids that name them.

A DEAD message is a pack (a JSON array of events) with the history headers of the executor
or of the retrier, and `Eventfn-Dead-Reason`. Each event of it is one dead letter, named
`<stream sequence>.<index in the pack>`; `<stream sequence>` alone names the whole pack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import orjson

from services.common import streams
from services.common.streams import (
    DEAD_AT,
    DEAD_REASON,
    HISTORY,
    LAST_ERROR,
    LAST_LOGS,
    LAST_REQUESTS,
    LAST_STACK,
)
from services.retrier.scheduler import event_count, parse_time


class BadDeadLetterId(ValueError):
    """A dead-letter id the deployment did not give (`letter_ids`), or a record's that is not
    `<sequence>` or `<sequence>.<index>`."""


@dataclass(frozen=True, slots=True)
class LetterId:
    """A dead letter's address: the DEAD message's sequence and, optionally, the event index."""

    seq: int
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> LetterId:
        """Parse `<sequence>` or `<sequence>.<index>`."""
        head, dot, tail = text.strip().partition(".")
        try:
            seq = int(head)
            index = int(tail) if dot else None
        except ValueError:
            raise BadDeadLetterId(
                f"dead letter id {text!r} is not <sequence> or <sequence>.<index>"
            ) from None
        if not 1 <= seq < 2**64 or (index is not None and index < 0):  # a stream's sequence
            raise BadDeadLetterId(f"dead letter id {text!r} is out of range")
        return cls(seq, index)

    def __str__(self) -> str:
        return str(self.seq) if self.index is None else f"{self.seq}.{self.index}"

    def key(self) -> tuple[int, int]:
        """Return its place in the stream: (sequence, index), a whole pack at its index 0."""
        return self.seq, self.index or 0


@dataclass(frozen=True, slots=True)
class DeadPack:
    """One DEAD message: where it is, when it was stored, its events and headers."""

    seq: int
    subject: str
    time: datetime
    headers: dict[str, str]
    data: bytes

    @property
    def workspace_id(self) -> str:
        """Return the workspace of the subject."""
        return self.subject.split(".")[1]

    @property
    def instance_id(self) -> str:
        """Return the instance of the subject."""
        return self.subject.split(".")[2]

    def events(self) -> list[bytes]:
        """Return the events as JSON texts (one element for a body that is not an array)."""
        try:
            parsed = orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return [self.data]
        if not isinstance(parsed, list):
            return [self.data]
        return [orjson.dumps(e) for e in parsed]

    def count(self) -> int:
        """Return how many letters it holds: its Eventfn-Count header (which every hand-off
        writes), else its body's events (parsing a pack holds about 13 times its size)."""
        try:
            count = int(self.headers.get(streams.COUNT, ""))
        except ValueError:
            count = 0
        return count if count > 0 else event_count(self.data)

    def array(self) -> tuple[bytes, int]:
        """Return the pack as a JSON array of its events, and how many it holds: the body as
        stored when it is one (encoding each event again gives each, with orjson, a buffer of
        128 KiB as tracemalloc counts it, whatever the event's size)."""
        try:
            parsed = orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return b"[" + self.data + b"]", 1
        if not isinstance(parsed, list):
            return b"[" + self.data + b"]", 1
        return self.data, len(parsed)

    def reason(self) -> str:
        """Return why it was dead-lettered."""
        if DEAD_REASON in self.headers:
            return self.headers[DEAD_REASON]
        attempt = self.headers.get(streams.ATTEMPT, "?")
        error = self.headers.get(LAST_ERROR, "")
        return f"permanent outcome on attempt {attempt}: {error}".rstrip(": ")

    def history(self) -> list[dict[str, object]]:
        """Return the recorded attempts, oldest first ([] when absent or unreadable)."""
        try:
            value = orjson.loads(self.headers.get(HISTORY, "[]") or "[]")
        except orjson.JSONDecodeError:
            return []
        return [a for a in value if isinstance(a, dict)] if isinstance(value, list) else []

    def last_logs(self) -> str:
        """Return the last attempt's console output ("" when absent or unreadable)."""
        try:
            value = orjson.loads(self.headers.get(LAST_LOGS, '""') or '""')
        except orjson.JSONDecodeError:
            return ""
        return value if isinstance(value, str) else ""

    def last_stack(self) -> str:
        """Return the last attempt's JavaScript stack ("" when absent or unreadable)."""
        try:
            value = orjson.loads(self.headers.get(LAST_STACK, '""') or '""')
        except orjson.JSONDecodeError:
            return ""
        return value if isinstance(value, str) else ""

    def died_in(self, start: datetime | None, end: datetime | None) -> bool:
        """Return whether its letters went to DEAD in [start, end) (no bound when None)."""
        died = self.dead_time()
        return (start is None or died >= start) and (end is None or died < end)

    def dead_time(self) -> datetime:
        """Return when the letters first went to DEAD (kept when some were replayed)."""
        try:
            return parse_time(self.headers[DEAD_AT])
        except (KeyError, ValueError):
            return self.time

    def last_requests(self) -> list[dict[str, object]]:
        """Return the last attempt's outgoing requests ([] when absent or unreadable)."""
        try:
            value = orjson.loads(self.headers.get(LAST_REQUESTS, "[]") or "[]")
        except orjson.JSONDecodeError:
            return []
        return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []

    def first_attempt_time(self) -> datetime | None:
        """Return the first attempt's time, when the header is readable."""
        try:
            return parse_time(self.headers[streams.FIRST_ATTEMPT_AT])
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Letter:
    """One event of a DEAD pack."""

    id: LetterId
    pack: DeadPack
    event: bytes

    @property
    def message_id(self) -> str:
        """Return the event's messageId, if it has one."""
        try:
            value = orjson.loads(self.event)
        except orjson.JSONDecodeError:
            return ""
        return str(value.get("messageId", "")) if isinstance(value, dict) else ""


def letters_of(pack: DeadPack) -> list[Letter]:
    """Return the dead letters of a pack, in pack order."""
    return [Letter(LetterId(pack.seq, i), pack, e) for i, e in enumerate(pack.events())]


def letters_key(pack: DeadPack, indexes: Iterable[int]) -> str:
    """Name letters of a pack uniquely: its sequence, its store time, a digest of indexes.

    The store time keeps the name unique should the DEAD stream be recreated and its
    sequences start again.
    """
    digest = hashlib.blake2b(",".join(map(str, indexes)).encode(), digest_size=8).hexdigest()
    return f"{pack.seq}:{pack.time.timestamp():.6f}:{digest}"
