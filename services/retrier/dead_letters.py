"""Dead letters in the DEAD stream: list by instance and time, show, replay, purge.

A DEAD message is a pack of dead letters (see `dead_packs`). Reads use JetStream direct get
with a per-instance subject filter (`dead.*.<instance>`), so no consumer is created;
retention is the DEAD stream's max age. A page of the list walks the instance's packs
backwards from the newest, one direct get each, and reads at most READ_BUDGET of them: an
instance may hold many dead letters (up to EVENTFN_DEAD_MAX_PER_INSTANCE packs), a call's
cost is bounded.

A replayed letter leaves DEAD, so it is replayed once: its events are published to EVENTS
first (the ack awaited), then the pack's other letters, if any, are stored again as a new
pack, then the old pack is deleted. A crash between these steps leaves the letter listed
(never lost); replaying it again is deduplicated by EVENTS for 10 minutes, as the replay's
message id is derived from the letter. A pack's others stored again carry an id derived from
them too (a repeated call stores them once); one the stream deduplicates against a copy since
deleted is stored anew. An instance holding as many packs as it may (the DEAD stream's limit
per subject) has no room for a pack's others: taking only some letters out of a pack is then
refused (`DeadLettersFull`) before anything is sent, and whole packs make room.

Replaying or purging all of an instance's letters (no names) streams them: the scan reads a
pack at a time, replays or deletes a chunk of packs (at most CHUNK_BYTES, or one larger pack),
and never holds the instance's letters, which may be many; it stops at the DEAD stream's
last sequence when the operation started, so letters dead-lettered meanwhile (a replay's own
failures among them) are left for another call and the run ends.

A replay runs the version its request names, else the instance's deployed one; the retries of
a pinned replay keep its version (`Eventfn-Version`, carried through RETRY), and so does the
dead letter it may become, which says which version failed. Replaying that letter again does
not keep the pin: it runs the version the new request names, or the deployed one (a replay
usually follows a fix, deployed or named).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from opentelemetry import trace

from services.common import streams
from services.common.errors import FailedPrecondition
from services.common.streams import DEAD_AT
from services.common.telemetry import PROPAGATOR
from services.common.telemetry import extract as extract_trace
from services.common.tracer import get_tracer
from services.retrier.dead_packs import (
    BadDeadLetterId,
    DeadPack,
    Letter,
    LetterId,
    letters_key,
    letters_of,
)
from services.retrier.scheduler import carried_headers, parse_time

__all__ = [
    "BadDeadLetterId",
    "DeadLetterStore",
    "DeadLettersFull",
    "DeadPack",
    "Letter",
    "LetterId",
]

log = logging.getLogger(__name__)
tracer = get_tracer("eventfn.retrier")
REPLAY_OF = streams.REPLAY_OF
# DEAD packs one page of the list reads at most (about 0.3 s here): past it, the page holds
# what was found and its cursor goes on from there (reading every pack of an instance with
# 20,000 took 5 s a call, for a Functions Read-only member).
READ_BUDGET = 1000
# Pack bytes a streamed replay or purge holds at once (a larger pack goes alone): replaying
# all of an instance's 129 MiB of letters held all of them, and more, in the shared retrier.
CHUNK_BYTES = 256 * 1024


class DeadLettersFull(FailedPrecondition):
    """Some letters of a pack cannot leave it: its instance holds as many packs of dead
    letters as it may, and the pack's other letters must be stored again as a new one."""

    def __init__(self, instance_id: str, *, sent: bool = False) -> None:
        what = (
            "a new dead letter took the last room once the chosen letters were sent back: "
            "their pack stays whole and they stay listed (replayed again within 10 minutes, "
            "they are not sent twice)"
            if sent
            else "that pack was left whole (packs taken before it in this call stay taken)"
        )
        super().__init__(
            f"instance {instance_id} holds as many packs of dead letters as it may "
            "(EVENTFN_DEAD_MAX_PER_INSTANCE), and taking only some letters out of a pack "
            f"stores its others as a new pack: {what}. Replay or purge whole packs first (a "
            "letter's id without its `.N` names its whole pack), or all of the instance's "
            "letters (no names); letters also leave DEAD when they expire"
        )


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def original_trace(headers: dict[str, str]) -> list[trace.Link]:
    """Return a link to the trace a stored message carries, if it carries one."""
    if streams.TRACEPARENT not in headers:
        return []
    context = trace.get_current_span(extract_trace(headers)).get_span_context()
    return [trace.Link(context)] if context.is_valid else []


class DeadLetterStore:
    """Read, replay and delete dead letters in the DEAD stream."""

    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._lock = asyncio.Lock()

    async def _direct(self, request: dict[str, object]) -> DeadPack | None:
        reply = await self._nc.request(
            f"$JS.API.DIRECT.GET.{streams.DEAD_STREAM}", orjson.dumps(request), timeout=5
        )
        headers = {str(k): str(v) for k, v in (reply.headers or {}).items()}
        status = headers.get("Status")
        if status in ("404", "204"):  # nothing there; 204: a batch's end with nothing before
            return None
        if status:
            raise RuntimeError(
                f"direct get from DEAD failed: {status} {headers.get('Description')}"
            )
        meta = {
            "Nats-Stream",
            "Nats-Sequence",
            "Nats-Time-Stamp",
            "Nats-Subject",
            "Nats-Last-Sequence",
        }
        return DeadPack(
            seq=int(headers["Nats-Sequence"]),
            subject=headers["Nats-Subject"],
            time=parse_time(headers["Nats-Time-Stamp"]),
            headers={k: v for k, v in headers.items() if k not in meta},
            data=reply.data,
        )

    async def pack(self, seq: int) -> DeadPack | None:
        """Return the DEAD message with this sequence, or None."""
        pack = await self._direct({"seq": seq})
        if pack is None or not pack.subject.startswith("dead."):
            return None
        return pack

    async def _last_up_to(self, subject: str, seq: int | None) -> DeadPack | None:
        """Return the subject's pack of highest sequence at or below `seq` (any, when None)."""
        if seq is None:
            return await self._direct({"last_by_subj": subject})
        if seq < 1:  # the server takes an up_to_seq of 0 for "no bound"
            return None
        # Answered by the pack, then an end-of-batch status (204 EOB): `nc.request` takes the
        # first and drops the second (its future is done), nothing waits in an inbox.
        return await self._direct({"multi_last": [subject], "up_to_seq": seq})

    async def scan(
        self,
        instance_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        below_seq: int | None = None,
    ) -> AsyncIterator[DeadPack]:
        """Yield the instance's DEAD packs dead-lettered in [start, end), in stream order.

        Letters re-stored after a partial replay keep their first dead time and come later in
        the stream: the scan starts at `start` (none was stored before it died) and, with an
        `end`, goes on past the first pack stored after it.
        """
        wanted = streams.subject_filter("dead", instance_id=instance_id)
        request: dict[str, object] = {"next_by_subj": wanted}
        if start is not None:
            request["start_time"] = _utc(start).isoformat().replace("+00:00", "Z")
        else:
            request["seq"] = 1
        while True:
            pack = await self._direct(request)
            if pack is None:
                return
            if below_seq is not None and pack.seq >= below_seq:
                return
            if pack.died_in(start, end):
                yield pack
            request = {"seq": pack.seq + 1, "next_by_subj": wanted}

    async def last_seq(self) -> int:
        """Return the DEAD stream's last sequence (0 while it is empty)."""
        return (await self._js.stream_info(streams.DEAD_STREAM)).state.last_seq or 0

    async def count(
        self,
        instance_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        up_to_seq: int,
    ) -> int:
        """Count the instance's letters in [start, end) stored at or before `up_to_seq`, a
        pack at a time (none is kept)."""
        total = 0
        async for pack in self.scan(instance_id, start=start, end=end, below_seq=up_to_seq + 1):
            total += pack.count()
        return total

    async def chunks(
        self,
        instance_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        up_to_seq: int,
        letters: int,
    ) -> AsyncIterator[list[DeadPack]]:
        """Yield the instance's packs dead-lettered in [start, end) and stored at or before
        `up_to_seq`, a few at a time: `letters` letters, or CHUNK_BYTES, at most (or one pack)."""
        chunk: list[DeadPack] = []
        held = size = 0
        async for pack in self.scan(instance_id, start=start, end=end, below_seq=up_to_seq + 1):
            chunk.append(pack)
            held += pack.count()
            size += len(pack.data)
            if held >= letters or size >= CHUNK_BYTES:
                yield chunk
                chunk, held, size = [], 0, 0
        if chunk:
            yield chunk

    async def purge_all(self, instance_id: str, *, end: datetime | None, up_to_seq: int) -> int:
        """Delete the instance's packs dead-lettered before `end` and stored at or before
        `up_to_seq`, one at a time; return how many letters they held."""
        count = 0
        async for pack in self.scan(instance_id, end=end, below_seq=up_to_seq + 1):
            async with self._lock:  # one replay or purge of a pack at a time in this process
                try:
                    await self._js.delete_msg(streams.DEAD_STREAM, pack.seq)
                except NotFoundError:
                    continue  # replayed or purged meanwhile
            count += pack.count()
        return count

    async def page(
        self,
        workspace_id: str,
        instance_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        size: int,
        before: LetterId | None,
        budget: int | None = None,
    ) -> tuple[list[Letter], LetterId | None]:
        """Return up to `size` letters newest first, older than `before`, and the next cursor.

        The walk goes backwards from `before` (or the newest pack), one pack at a time, and
        reads at most `budget` packs (READ_BUDGET by default): when they run out, the page holds
        the letters found so far, maybe fewer than `size` or none, and the cursor goes on below
        the last pack read. Packs are stored in time order, so the walk ends at the first one
        stored before `start` (a pack stored again after a partial replay keeps its first dead
        time, never later than its store time); `end` filters by dead time only.
        """
        subject = streams.dead_subject(workspace_id, instance_id)
        found: list[Letter] = []
        up_to = None
        if before is not None:  # at index 0 none of its pack is older: start below it
            up_to = before.seq if before.index else before.seq - 1
        for _ in range(READ_BUDGET if budget is None else budget):
            pack = await self._last_up_to(subject, up_to)
            if pack is None or (start is not None and pack.time < start):
                return found, None
            if pack.died_in(start, end):
                found += [
                    letter
                    for letter in reversed(letters_of(pack))
                    if before is None or letter.id.key() < before.key()
                ]
                if len(found) > size:  # one more than the page: there is a next one
                    return found[:size], found[size - 1].id
            up_to = pack.seq - 1
        # Out of reads: all letters of the packs read are on the page; go on below them.
        return found, LetterId(up_to + 1, 0) if up_to is not None else None

    async def select(
        self,
        instance_id: str,
        ids: Sequence[LetterId],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Letter]:
        """Return the chosen letters of the instance (all in the range when `ids` is empty:
        for tools and tests; the service streams those, see `chunks`)."""
        if not ids:
            return [
                letter
                async for pack in self.scan(instance_id, start=start, end=end)
                for letter in letters_of(pack)
            ]
        out: list[Letter] = []
        by_seq: dict[int, list[LetterId]] = {}
        for letter_id in ids:
            by_seq.setdefault(letter_id.seq, []).append(letter_id)
        for seq, chosen in sorted(by_seq.items()):
            pack = await self.pack(seq)
            if pack is None or pack.instance_id != instance_id:
                continue
            letters = letters_of(pack)
            if any(c.index is None for c in chosen):
                out += letters
            else:
                indexes = {c.index for c in chosen}
                out += [letter for letter in letters if letter.id.index in indexes]
        return out

    async def replay(self, letters: Iterable[Letter], *, version_id: str = "") -> int:
        """Send the letters back to their instance's EVENTS subject as first attempts.

        Each replayed letter leaves DEAD once its events are stored in EVENTS; return how
        many were replayed (letters already gone meanwhile are skipped). With `version_id`,
        the executor runs that version of the function for them.
        """
        by_pack: dict[int, set[int]] = {}
        for letter in letters:
            by_pack.setdefault(letter.pack.seq, set()).add(letter.id.index or 0)
        return await self._replay(sorted(by_pack.items()), version_id)

    async def replay_packs(self, packs: Iterable[DeadPack], *, version_id: str = "") -> int:
        """Send every letter of the packs back, as `replay` does, each pack as it is stored."""
        return await self._replay([(pack.seq, None) for pack in packs], version_id)

    async def _replay(self, chosen: list[tuple[int, set[int] | None]], version_id: str) -> int:
        now = datetime.now(UTC).isoformat()
        count = 0
        limits: dict[str, int] = {}  # the DEAD stream's limit per subject, read once a call
        async with self._lock:  # one replay or purge of a pack at a time in this process
            for seq, indexes in chosen:
                pack = await self.pack(seq)  # as it is now: replayed or purged meanwhile?
                if pack is not None:
                    count += await self._send_back(pack, indexes, now, version_id, limits)
        return count

    async def _send_back(
        self,
        pack: DeadPack,
        chosen: set[int] | None,
        now: str,
        version_id: str,
        limits: dict[str, int],
    ) -> int:
        """Publish letters of a pack (all when `chosen` is None) to EVENTS, then take them out
        of DEAD; return how many."""
        body, total = pack.array()
        indexes = list(range(total)) if chosen is None else sorted(i for i in chosen if i < total)
        if not indexes:
            return 0
        partial = len(indexes) < total
        if partial:  # some of it: only then are its events split out
            stored = pack.events()
            body = b"[" + b",".join(stored[i] for i in indexes) + b"]"
        headers = {
            streams.MSG_ID: f"replay:{letters_key(pack, indexes)}",
            streams.COUNT: str(len(indexes)),
            streams.ATTEMPT: "1",
            streams.FIRST_ATTEMPT_AT: now,
            REPLAY_OF: ",".join(f"{pack.seq}.{i}" for i in indexes),
        }
        if version_id:
            headers[streams.VERSION] = version_id
        subject = streams.events_subject(pack.workspace_id, pack.instance_id)
        if partial:  # its others are stored again: refused before anything is sent
            await self._check_room(pack, limits)
        # The replay is a new trace (of the replay call), linked to the original one.
        with tracer.start_as_current_span(
            "dead.replay.pack",
            links=original_trace(pack.headers),
            attributes={"eventfn.instance_id": pack.instance_id, "eventfn.events": len(indexes)},
        ):
            PROPAGATOR.inject(headers)
            await self._js.publish(subject, body, headers=headers)
        try:
            await self._remove(pack, set(indexes), total)
        except DeadLettersFull as full:  # a new dead letter took the room meanwhile
            raise DeadLettersFull(pack.instance_id, sent=True) from full
        return len(indexes)

    async def _check_room(self, pack: DeadPack, limits: dict[str, int]) -> None:
        """Raise `DeadLettersFull` when the pack's instance holds as many packs as the DEAD
        stream allows a subject (the limit read from the stream, kept in `limits` for the
        rest of the call: an upgrade may keep it above the setting)."""
        if "dead" not in limits:
            info = await self._js.stream_info(streams.DEAD_STREAM)
            limits["dead"] = info.config.max_msgs_per_subject or 0
        limit = limits["dead"]
        if limit <= 0:
            return
        held = await streams.subject_counts(self._js, streams.DEAD_STREAM, pack.subject)
        if held.get(pack.subject, 0) >= limit:
            raise DeadLettersFull(pack.instance_id)

    async def _remove(self, pack: DeadPack, indexes: set[int], total: int) -> None:
        """Take letters out of DEAD: store the pack's others again, then delete the pack.
        Raise `DeadLettersFull`, the pack left whole, when its instance has no room for them."""
        if len(indexes) < total:
            events = pack.events()
            rest = [i for i in range(len(events)) if i not in indexes]
            headers = carried_headers(pack.headers)
            key = f"rest:{letters_key(pack, rest)}"
            headers[streams.COUNT] = str(len(rest))
            headers.setdefault(DEAD_AT, pack.time.isoformat())
            body = b"[" + b",".join(events[i] for i in rest) + b"]"
            try:
                stored = await self._js.publish(
                    pack.subject, body, headers={**headers, streams.MSG_ID: key}
                )
                # Deduplicated: an earlier call stored them. Gone since (replayed or purged,
                # within the stream's 2-minute window)? Then they are stored again, anew.
                if stored.duplicate and await self.pack(stored.seq) is None:
                    await self._js.publish(
                        pack.subject,
                        body,
                        headers={**headers, streams.MSG_ID: f"{key}:{stored.seq}"},
                    )
            except APIError as error:
                if streams.subject_full(error):
                    raise DeadLettersFull(pack.instance_id) from error
                raise
        await self._delete(pack.seq)

    async def _delete(self, seq: int) -> None:
        try:
            await self._js.delete_msg(streams.DEAD_STREAM, seq)
        except NotFoundError:
            pass  # deleted meanwhile (a purge, or another retrier's replay)

    async def purge(self, letters: Iterable[Letter]) -> int:
        """Delete the letters from DEAD (their pack's other letters stay, stored again, as
        after a replay); return how many were deleted (letters gone meanwhile are skipped)."""
        by_pack: dict[int, tuple[DeadPack, set[int]]] = {}
        for letter in letters:
            by_pack.setdefault(letter.pack.seq, (letter.pack, set()))[1].add(letter.id.index or 0)
        count = 0
        async with self._lock:  # one replay or purge of a pack at a time in this process
            for seq, (selected, chosen) in sorted(by_pack.items()):
                if len(chosen) >= len(selected.events()):  # the whole pack: delete it
                    try:
                        await self._js.delete_msg(streams.DEAD_STREAM, seq)
                    except NotFoundError:
                        continue  # replayed or purged meanwhile
                    count += len(chosen)
                    continue
                pack = await self.pack(seq)  # as it is now: replayed or purged meanwhile?
                if pack is None:
                    continue
                _, total = pack.array()
                indexes = {i for i in chosen if i < total}
                if indexes:
                    await self._remove(pack, indexes, total)
                    count += len(indexes)
        return count
