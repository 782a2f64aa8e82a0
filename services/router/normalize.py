"""Validate and fill Segment tracking API payloads, without I/O.

Rules, after Segment's HTTP Tracking API and its common spec:

- Limits: 32 KB per single-event request and per event of a batch (measured on the
  event as sent), 500 KB per batch request (after decompression). One bad event
  refuses the whole request, naming its index.
- Identity: `userId` or `anonymousId` is required, a non-empty string; an integer is
  accepted and turned into its decimal string, as Segment's libraries do. `track`
  needs `event`, `alias` needs `userId` and `previousId`, `group` needs `groupId`.
- Types: the endpoint decides the `type` of a single event; a batch item must carry
  one of track, identify, page, screen, group, alias or delete.
- `properties`, `traits`, `context` and `integrations` must be objects (or null).
- Filled: `messageId` (uuid4 when absent), `receivedAt` (server clock, always),
  `timestamp` corrected for device clock skew: `receivedAt - (sentAt - timestamp)`
  when both are valid ISO-8601 times; the client's value is kept in
  `originalTimestamp`. An unparseable client time is kept there too, and
  `timestamp` falls back to `receivedAt`.
- A batch's top-level `context` and `integrations` are merged into each item (the
  item's keys win); its top-level `sentAt` (a string of at most 64 characters) applies to
  items without one. The limits hold for
  the events as stored: each within 32 KB with them merged, and the batch's events together
  within 1 MB (twice the request's limit: a small request must not store a shared context
  once per event).
- `writeKey` is taken out of every stored event; unknown fields and
  `context.library` stay as sent.
- Depth: the JSON decoder stops at 1024 levels, and an event must nest at most
  `MAX_EVENT_DEPTH` levels so that any array of events can still be encoded.
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.common.packs import MAX_MESSAGE_ID_CHARS
from services.router.errors import (
    BodyTooLargeError,
    CorruptBodyError,
    EventTooLargeError,
    InvalidEventError,
    InvalidRequestError,
    MalformedJsonError,
    NestingTooDeepError,
    UnsupportedEncodingError,
)

EVENT_MAX_BYTES = 32 * 1024
BATCH_MAX_BYTES = 500 * 1024
# A batch's events as stored, its top-level context and integrations merged into each.
MERGED_BATCH_MAX_BYTES = 1000 * 1024
# orjson's decoder refuses documents nested deeper than this.
MAX_DOCUMENT_DEPTH = 1024
# orjson's encoder stops at 254 levels; one level is kept for the array of a pack.
MAX_EVENT_DEPTH = 253

SINGLE_KINDS = frozenset({"track", "identify", "page", "screen", "group", "alias"})
EVENT_TYPES = SINGLE_KINDS | {"delete"}
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
MAX_GZIP_MEMBERS = 16


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """Hold what a tracking request carried: the body's write key and its events."""

    write_key: str | None
    events: list[dict[str, Any]]


def format_time(moment: datetime) -> str:
    """Format an aware datetime as ISO-8601 in UTC with milliseconds and a `Z`."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # %-formatting is faster than isoformat() and this runs for every event.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond // 1000,
    )


def decode_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Return the body uncompressed, refusing more than `max_bytes` once inflated."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > max_bytes:
            raise BodyTooLargeError(max_bytes)
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncodingError(encoding)
    return _gunzip(body, max_bytes)


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """Inflate gzip members one after another, never producing more than the cap, nor more
    than MAX_GZIP_MEMBERS of them (each copies the rest of the body: thousands of empty ones
    held the router's loop ≈ 200 ms a request; a client compresses a body once)."""
    parts: list[bytes] = []
    budget = max_bytes
    rest = body
    try:
        while True:
            if len(parts) == MAX_GZIP_MEMBERS:
                raise CorruptBodyError(
                    f"gzip body has more than {MAX_GZIP_MEMBERS} members; compress it as one"
                )
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            # Asking for one byte over the budget tells a bomb from an exact fit.
            chunk = inflater.decompress(rest, budget + 1)
            if len(chunk) > budget:
                raise BodyTooLargeError(max_bytes, decompressed=True)
            if not inflater.eof:
                raise CorruptBodyError("gzip body is truncated")
            parts.append(chunk)
            budget -= len(chunk)
            rest = inflater.unused_data
            if not rest:
                break
    except zlib.error as exc:
        raise CorruptBodyError(f"gzip body cannot be decoded: {exc}") from exc
    return b"".join(parts)


# A \uXXXX escape of a surrogate, not itself escaped (after an even run of backslashes): a
# high one with the low one after it is a pair, any other is lone.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|(?<!\\)((?:\\\\)*)\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _lone_surrogate_replaced(match: re.Match[bytes]) -> bytes:
    if match.group(3) is not None:
        return match.group(0)  # a pair
    return (match.group(1) or match.group(4) or b"") + b"\\ufffd"


def parse_json(body: bytes) -> Any:
    """Decode JSON bytes, turning decoder failures into request errors.

    An escaped lone surrogate (half of an emoji a browser's `substring` cut in two, which
    JSON.stringify writes as `\\ud83d`) is U+FFFD, as Segment's API reads it in JavaScript and
    writes it in UTF-8; orjson refused the whole request as malformed.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in exc.msg:
            mended = _SURROGATE_ESCAPE.sub(_lone_surrogate_replaced, body)
            if mended != body:
                return parse_json(mended)
        if "depth" in exc.msg:
            raise NestingTooDeepError(MAX_DOCUMENT_DEPTH) from exc
        raise MalformedJsonError(exc.msg, line=exc.lineno, column=exc.colno) from exc


def parse_single(kind: str, body: bytes, now: datetime) -> ParsedRequest:
    """Parse the body of `/v1/<kind>` into its write key and one normalized event."""
    if kind not in SINGLE_KINDS:
        raise InvalidRequestError(
            f"unknown call {kind!r}; use one of {', '.join(sorted(SINGLE_KINDS))}"
        )
    if len(body) > EVENT_MAX_BYTES:
        raise BodyTooLargeError(EVENT_MAX_BYTES)
    document = parse_json(body)
    if type(document) is not dict:
        raise InvalidEventError(f"body must be a JSON object, got {_json_type(document)}")
    # As stored, re-encoded: `1e15` is written `1000000000000000.0` (a 32 KB body of such
    # numbers was stored as 124 KB), as a batch's events are measured.
    size = _check_depth(document, None)
    if size > EVENT_MAX_BYTES:
        raise EventTooLargeError(size, EVENT_MAX_BYTES)
    write_key = _take_write_key(document, None)
    document["type"] = kind
    arrival = _Arrival(now)
    return ParsedRequest(write_key, [_normalize(document, arrival, None, None)])


def parse_batch(body: bytes, now: datetime) -> ParsedRequest:
    """Parse the body of `/v1/batch` into its write key and normalized events."""
    if len(body) > BATCH_MAX_BYTES:
        raise BodyTooLargeError(BATCH_MAX_BYTES)
    document = parse_json(body)
    if type(document) is not dict:
        raise InvalidRequestError(f"body must be a JSON object, got {_json_type(document)}")
    items = document.get("batch")
    if type(items) is not list:
        raise InvalidRequestError(
            f"body must have a `batch` array of events, got {_json_type(items)}", field="batch"
        )
    write_key = _take_write_key(document, None)
    events = normalize_events(
        items,
        now,
        sent_at=_batch_sent_at(document.get("sentAt")),
        context=_top_level_object(document, "context"),
        integrations=_top_level_object(document, "integrations"),
    )
    for index, event in enumerate(items):
        found = _take_write_key(event, index)
        if found is not None and write_key is None:
            write_key = found
        elif found is not None and found != write_key:
            raise InvalidRequestError("events carry different writeKeys", index=index)
    return ParsedRequest(write_key, events)


# A batch's top-level `sentAt`, copied into each of its events: a time (ISO-8601 is ≤ 35).
MAX_SENT_AT_CHARS = 64


def _batch_sent_at(value: object) -> str | None:
    """Return a batch's top-level `sentAt`, refusing anything but a short string: it is copied
    into every event (470 KB of it, gzipped to 641 bytes with 500 events, stored 240 MB, and
    a nested one failed the request with a bare 500)."""
    if value is None or (type(value) is str and len(value) <= MAX_SENT_AT_CHARS):
        return value
    got = f"a string of {len(value)} characters" if type(value) is str else _json_type(value)
    raise InvalidRequestError(
        f"batch `sentAt` must be an ISO-8601 time (a string of at most {MAX_SENT_AT_CHARS} "
        f"characters), got {got}",
        field="sentAt",
    )


# Bad events of one batch a refusal names at most (the first ones).
MAX_EVENT_ERRORS = 100


def normalize_events(
    items: Sequence[object],
    now: datetime,
    *,
    sent_at: object = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    errors: list[InvalidRequestError] | None = None,
    max_errors: int = MAX_EVENT_ERRORS,
) -> list[dict[str, Any]]:
    """Validate and fill decoded batch items in place; refuse all on the first bad one, or,
    given `errors`, collect bad events' refusals there and go on with the next, up to
    `max_errors` of them (then stop: a batch of 250,000 bad events held the loop seconds)."""
    arrival = _Arrival(now)
    batch_sent = _parse_time(sent_at)
    for name, shared in (("context", context), ("integrations", integrations)):
        # Merged into every event: as deep there as in the batch, one level under the event.
        if shared:
            try:
                orjson.dumps([{name: shared}])
            except orjson.JSONEncodeError as exc:
                raise NestingTooDeepError(MAX_EVENT_DEPTH, field=name) from exc
    measured = _all_within_limits(items)
    events: list[dict[str, Any]] = []
    merging = bool(context or integrations)
    stored = 0  # bytes of the events with the shared objects merged (counted when merging)
    for index, item in enumerate(items):
        try:
            event = _one_event(
                item, index, arrival, batch_sent, sent_at, context, integrations, measured
            )
            if merging:
                stored += _merged_size(event, index)
        except InvalidRequestError as error:
            if errors is None:
                raise
            errors.append(error)
            if len(errors) >= max_errors:
                break
            continue
        if stored > MERGED_BATCH_MAX_BYTES:
            raise InvalidRequestError(
                "the batch's events with its top-level context and integrations merged into "
                f"each are over the {MERGED_BATCH_MAX_BYTES // 1024} KB a batch may store; "
                "send fewer events per batch or a smaller shared context"
            )
        events.append(event)
    return events


def _merged_size(event: dict[str, Any], index: int) -> int:
    """Return the size of an event a batch's context or integrations were merged into,
    refusing it when they took it past the per-event limit."""
    size = len(orjson.dumps(event))
    if size > EVENT_MAX_BYTES:
        raise EventTooLargeError(size, EVENT_MAX_BYTES, index=index, merged=True)
    return size


def _one_event(
    item: object,
    index: int,
    arrival: _Arrival,
    batch_sent: datetime | None,
    sent_at: object,
    context: Mapping[str, Any] | None,
    integrations: Mapping[str, Any] | None,
    measured: bool,
) -> dict[str, Any]:
    """Validate and fill one batch item in place (`measured`: every item of its batch is
    known to be within the depth and size limits)."""
    if type(item) is not dict:
        raise InvalidEventError(
            f"each event must be a JSON object, got {_json_type(item)}", index=index
        )
    if not measured:
        size = _check_depth(item, index)
        if size > EVENT_MAX_BYTES:
            raise EventTooLargeError(size, EVENT_MAX_BYTES, index=index)
    kind = item.get("type")
    if type(kind) is not str or kind not in EVENT_TYPES:
        types = ", ".join(sorted(EVENT_TYPES))
        got = repr(kind) if type(kind) is str else _json_type(kind)
        raise InvalidEventError(
            f"`type` must be one of {types}, got {got}"
            if "type" in item
            else f"`type` is missing; use one of {types}",
            index=index,
            field="type",
        )
    if sent_at is not None and "sentAt" not in item:
        item["sentAt"] = sent_at
    if context:
        _merge_under(item, "context", context, index)
    if integrations:
        _merge_under(item, "integrations", integrations, index)
    return _normalize(item, arrival, index, batch_sent)


class _Arrival:
    """Carry the server's receive time, formatted once per request."""

    __slots__ = ("moment", "text")

    def __init__(self, moment: datetime) -> None:
        self.moment = moment
        self.text = format_time(moment)


def _normalize(
    event: dict[str, Any], arrival: _Arrival, index: int | None, batch_sent: datetime | None
) -> dict[str, Any]:
    """Check one event against the spec and fill the server-side fields in place."""
    for name in _OBJECT_FIELDS:
        value = event.get(name)
        if value is not None and type(value) is not dict:
            raise InvalidEventError(
                f"`{name}` must be an object, got {_json_type(value)}", index=index, field=name
            )
    # The common case, a string, without a call per field (this runs for every event).
    user = event.get("userId")
    has_user = user != "" if type(user) is str else _identifier(event, "userId", index)
    anonymous = event.get("anonymousId")
    if anonymous is None:
        has_anonymous = False
    elif type(anonymous) is str:
        has_anonymous = anonymous != ""
    else:
        has_anonymous = _identifier(event, "anonymousId", index)
    if not (has_user or has_anonymous):
        raise InvalidEventError(
            "`userId` or `anonymousId` is required (a non-empty string)",
            index=index,
            field="userId",
        )
    kind = event["type"]
    if kind == "track":
        name = event.get("event")
        if type(name) is not str or not name:
            raise InvalidEventError(
                "a track call needs `event`, a non-empty string", index=index, field="event"
            )
    elif kind == "alias":
        if not has_user:
            raise InvalidEventError("an alias call needs `userId`", index=index, field="userId")
        if not _identifier(event, "previousId", index):
            raise InvalidEventError(
                "an alias call needs `previousId`", index=index, field="previousId"
            )
    elif kind == "group" and not _identifier(event, "groupId", index):
        raise InvalidEventError("a group call needs `groupId`", index=index, field="groupId")
    message_id = event.get("messageId")
    if message_id is None or message_id == "":
        event["messageId"] = str(uuid.uuid4())
    elif type(message_id) is int:
        event["messageId"] = str(message_id)
    elif type(message_id) is not str:
        raise InvalidEventError(
            f"`messageId` must be a string, got {_json_type(message_id)}",
            index=index,
            field="messageId",
        )
    elif len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise InvalidEventError(
            f"`messageId` may be at most {MAX_MESSAGE_ID_CHARS} characters, got {len(message_id)}",
            index=index,
            field="messageId",
        )
    event["receivedAt"] = arrival.text
    if "timestamp" in event or "originalTimestamp" in event:
        _fill_timestamp(event, arrival, batch_sent)
    else:
        event["timestamp"] = arrival.text
    return event


def _fill_timestamp(event: dict[str, Any], arrival: _Arrival, batch_sent: datetime | None) -> None:
    """Set `timestamp` corrected for clock skew and keep the client's in `originalTimestamp`."""
    client = event.get("timestamp")
    if client is None:
        client = event.get("originalTimestamp")
    if client is None:
        event["timestamp"] = arrival.text
        return
    event["originalTimestamp"] = client
    occurred = _parse_time(client)
    if occurred is None:
        event["timestamp"] = arrival.text
        return
    sent = _parse_time(event.get("sentAt")) or batch_sent
    if sent is None:
        event["timestamp"] = client
        return
    try:
        event["timestamp"] = format_time(arrival.moment - (sent - occurred))
    except (OverflowError, ValueError):
        # A skew that leaves datetime's range is no usable time: trust the server clock.
        event["timestamp"] = arrival.text


def _parse_time(value: object) -> datetime | None:
    """Read an ISO-8601 time (naive means UTC), or None when it is not one."""
    if type(value) is not str:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _identifier(event: dict[str, Any], name: str, index: int | None) -> bool:
    """Tell whether an id field is present, turning an integer into its string."""
    value = event.get(name)
    if value is None:
        return False
    kind = type(value)
    if kind is str:
        return value != ""
    if kind is int:
        event[name] = str(value)
        return True
    raise InvalidEventError(
        f"`{name}` must be a string, got {_json_type(value)}", index=index, field=name
    )


def _all_within_limits(items: Sequence[object]) -> bool:
    """Tell, with one encoding of the whole batch, whether each item is within the depth and
    size limits that `_check_depth` measures one by one (no item is larger than the batch)."""
    try:
        # Each item nests inside the batch's array as `_check_depth` nests it inside its own.
        return len(orjson.dumps(items)) - 2 <= EVENT_MAX_BYTES
    except orjson.JSONEncodeError:
        return False


def _check_depth(event: dict[str, Any], index: int | None) -> int:
    """Return the encoded size of an event, refusing one too deep to re-encode."""
    try:
        # Encoding inside a list proves the event also fits in a pack's array.
        return len(orjson.dumps([event])) - 2
    except orjson.JSONEncodeError as exc:
        raise NestingTooDeepError(MAX_EVENT_DEPTH, index=index) from exc


def _take_write_key(document: dict[str, Any], index: int | None) -> str | None:
    """Remove `writeKey` from a JSON object and return it (None when absent or empty)."""
    value = document.pop("writeKey", None)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise InvalidRequestError(
            f"`writeKey` must be a string, got {_json_type(value)}", index=index, field="writeKey"
        )
    return value


def _top_level_object(document: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Return a batch's top-level object field, refusing one that is not an object."""
    value = document.get(name)
    if value is None or type(value) is dict:
        return value
    raise InvalidRequestError(
        f"batch `{name}` must be an object, got {_json_type(value)}", field=name
    )


def _merge_under(event: dict[str, Any], name: str, shared: Mapping[str, Any], index: int) -> None:
    """Merge a batch-wide object into an event's own, the event's keys winning."""
    own = event.get(name)
    if own is None:
        event[name] = dict(shared)
    elif type(own) is dict:
        event[name] = {**shared, **own}
    else:
        raise InvalidEventError(
            f"`{name}` must be an object, got {_json_type(own)}", index=index, field=name
        )


def _json_type(value: object) -> str:
    """Name the JSON type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
