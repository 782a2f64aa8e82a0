"""What one small request may make the router store. A batch's top-level `sentAt` was copied
into every event unmeasured: 470 KB of it and 500 events, gzipped to 641 bytes, became 240 MB
of events (a real router's memory went from 182 MB to 1.1 GB), and a deeply nested one failed
the request with a bare 500 and a traceback a line. A single event was measured as sent, not
as stored: numbers written `1e15` are stored `1000000000000000.0` (32 KB sent, 124 KB
stored)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.router.errors import EventTooLargeError, InvalidRequestError
from services.router.normalize import EVENT_MAX_BYTES, parse_batch, parse_single

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
EVENT = {"type": "track", "userId": "u", "event": "E"}


@pytest.mark.parametrize(
    "sent_at",
    ["x" * 470_000, "x" * 65, 12, {"at": "now"}, [[[[["deep"]]]]], True],
    ids=["470 KB", "65 characters", "number", "object", "nested", "boolean"],
)
def test_a_batch_sent_at_is_a_short_string_or_the_request_is_refused(sent_at: object) -> None:
    body = orjson.dumps({"sentAt": sent_at, "batch": [EVENT] * 500})
    with pytest.raises(InvalidRequestError, match="batch `sentAt` must be an ISO-8601 time"):
        parse_batch(body, NOW)


def test_a_batch_sent_at_as_clients_send_it_applies_to_its_events() -> None:
    body = orjson.dumps({"sentAt": "2026-12-03T08:59:59.000Z", "batch": [EVENT, EVENT]})
    parsed = parse_batch(body, NOW)
    assert [e["sentAt"] for e in parsed.events] == ["2026-12-03T08:59:59.000Z"] * 2


def test_a_single_event_is_measured_as_it_is_stored() -> None:
    numbers = {"n": [1e15] * 4000}  # 5 bytes each sent, 19 stored
    body = orjson.dumps({**EVENT, "properties": numbers}).replace(b"1000000000000000.0", b"1e15")
    assert len(body) <= EVENT_MAX_BYTES
    with pytest.raises(EventTooLargeError):
        parse_single("track", body, NOW)
