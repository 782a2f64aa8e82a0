"""Split one request's routed events for one instance into packs under a byte cap.

A pack is one JetStream message: the JSON array of its events, in request order.
Its dedupe id (`Nats-Msg-Id`) is the instance id and a digest of the pack's
messageIds, so a client's resend of the same request publishes the same ids and
JetStream drops the copies (packs of concurrent requests joined into one message get a
digest of their digests). An event larger than the cap travels alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_PACK_BYTES = 1024 * 1024
# A messageId travels in the headers of the packs holding it (JetStream refuses headers past
# 64 KB: one of 22,000 characters wedged its source's publishes); SDKs send UUIDs.
MAX_MESSAGE_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class Pack:
    """One message's worth of events: the JSON array bytes and its dedupe id."""

    body: bytes
    dedupe_id: str
    message_ids: tuple[str, ...]

    @property
    def count(self) -> int:
        """Return how many events the pack holds."""
        return len(self.message_ids)


def dedupe_id(instance_id: str, message_ids: Iterable[str]) -> str:
    """Return `<instance id>:<blake2b-128 hex of the messageIds>`, stable for equal ids."""
    ids = message_ids if isinstance(message_ids, list | tuple) else list(message_ids)
    try:
        # A JSON array of strings tells every list of ids apart (["ab", "c"] from
        # ["a", "bc"]), and orjson writes it in one call: no Python step per id.
        encoded = orjson.dumps(ids)
    except orjson.JSONEncodeError:  # a lone surrogate: length-prefixed, each id alone
        encoded = b"".join(
            len(raw).to_bytes(4, "big") + raw
            for raw in (i.encode("utf-8", "surrogatepass") for i in ids)
        )
    return f"{instance_id}:{hashlib.blake2b(encoded, digest_size=16).hexdigest()}"


def merged_dedupe_id(instance_id: str, packs: Iterable[Pack]) -> str:
    """Return the dedupe id of packs joined into one message: a digest of their own digests
    (the same packs give the same id), personalised so that no pack's id of messageIds
    can equal it."""
    digest = hashlib.blake2b(digest_size=16, person=b"eventfn.merged")
    for pack in packs:
        digest.update(pack.dedupe_id.rpartition(":")[2].encode())  # 32 hex digits each
    return f"{instance_id}:{digest.hexdigest()}"


def encode_event(event: Mapping[str, Any]) -> tuple[str, bytes]:
    """Return an event's messageId and its JSON bytes, ready for `pack_encoded`."""
    return str(event.get("messageId", "")), orjson.dumps(event)


def pack_events(
    instance_id: str,
    events: Sequence[Mapping[str, Any]],
    *,
    max_bytes: int = DEFAULT_PACK_BYTES,
) -> list[Pack]:
    """Encode events and split them into packs of at most `max_bytes` each."""
    return pack_encoded(instance_id, [encode_event(e) for e in events], max_bytes=max_bytes)


def pack_encoded(
    instance_id: str,
    items: Sequence[tuple[str, bytes]],
    *,
    max_bytes: int = DEFAULT_PACK_BYTES,
) -> list[Pack]:
    """Split (messageId, JSON bytes) pairs, in order, into packs of at most `max_bytes`."""
    if max_bytes < 2:
        raise ValueError("max_bytes must leave room for the array brackets")
    packs: list[Pack] = []
    start = 0
    size = 2  # the brackets of the array
    for index, (_, encoded) in enumerate(items):
        added = len(encoded) + (1 if index > start else 0)  # a comma after the first
        if index > start and size + added > max_bytes:
            packs.append(_pack(instance_id, items[start:index]))
            start, added, size = index, len(encoded), 2
        size += added
    if start < len(items):
        packs.append(_pack(instance_id, items[start:]))
    return packs


def _pack(instance_id: str, items: Sequence[tuple[str, bytes]]) -> Pack:
    """Build one pack from a non-empty run of encoded events."""
    message_ids = tuple(message_id for message_id, _ in items)
    body = b"[" + b",".join(encoded for _, encoded in items) + b"]"
    return Pack(body, dedupe_id(instance_id, message_ids), message_ids)


def pack_count(declared: str | None, body: bytes) -> int:
    """Return a pack's event count: from its `Eventfn-Count` header, else by parsing it."""
    if declared is not None and declared.isdigit():
        return int(declared)
    events = orjson.loads(body)
    return len(events) if isinstance(events, list) else 1


def header_strings(value: str | None) -> tuple[str, ...]:
    """Read a header holding a JSON list of strings (`Eventfn-Message-Ids`,
    `Eventfn-Trace-Links`); empty when absent or bad."""
    if not value:
        return ()
    try:
        ids = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ()
    return tuple(str(i) for i in ids) if isinstance(ids, list) else ()
