"""Tests for validation and filling of tracking API payloads."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from services.router.normalize import (
    BATCH_MAX_BYTES,
    EVENT_MAX_BYTES,
    MAX_EVENT_DEPTH,
    MERGED_BATCH_MAX_BYTES,
    decode_body,
    format_time,
    normalize_events,
    parse_batch,
    parse_json,
    parse_single,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
NOW_TEXT = "2024-05-01T12:00:00.123Z"


def body(value: Any) -> bytes:
    """Encode a test payload (deeper than orjson writes: with the standard library)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


def single(kind: str, value: Any) -> dict[str, Any]:
    """Parse one single-event request and return its event."""
    return parse_single(kind, body(value), NOW).events[0]


def batch(*items: Any, **top: Any) -> list[dict[str, Any]]:
    """Parse one batch request and return its events."""
    return parse_batch(body({"batch": list(items), **top}), NOW).events


# --- bad input named in issue 5 -------------------------------------------------------


def test_malformed_json_is_refused_with_position() -> None:
    with pytest.raises(MalformedJsonError) as caught:
        parse_single("track", b'{"userId": "u", "event": "x",}', NOW)
    assert caught.value.line == 1
    assert caught.value.column > 1
    assert "not valid JSON" in caught.value.message


def test_empty_body_is_malformed() -> None:
    with pytest.raises(MalformedJsonError):
        parse_batch(b"", NOW)


def test_non_object_properties_is_refused() -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("track", {"userId": "u", "event": "E", "properties": [1, 2]})
    assert caught.value.field == "properties"
    assert "`properties` must be an object, got array" in caught.value.message


@pytest.mark.parametrize("name", ["traits", "context", "integrations"])
def test_non_object_traits_context_integrations_are_refused(name: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("identify", {"userId": "u", name: "text"})
    assert caught.value.field == name


def test_invalid_type_in_batch_is_refused_with_index() -> None:
    good = {"type": "track", "userId": "u", "event": "E"}
    with pytest.raises(InvalidEventError) as caught:
        batch(good, {"type": "purchase", "userId": "u"})
    assert caught.value.index == 1
    assert caught.value.field == "type"
    assert caught.value.message.startswith("batch[1]: `type` must be one of")


@pytest.mark.parametrize("kind", [None, 3, ["track"], {"a": 1}])
def test_missing_or_non_string_type_is_refused(kind: Any) -> None:
    with pytest.raises(InvalidEventError):
        batch({"type": kind, "userId": "u"})


def test_unknown_single_kind_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        parse_single("delete", body({"userId": "u"}), NOW)


@pytest.mark.parametrize(
    "ids",
    [{}, {"userId": None}, {"userId": "", "anonymousId": ""}, {"anonymousId": None}],
)
def test_missing_user_id_and_anonymous_id_is_refused(ids: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("track", {"event": "E", **ids})
    assert "`userId` or `anonymousId` is required" in caught.value.message


@pytest.mark.parametrize("value", [1.5, True, ["u"], {"id": 1}])
def test_identity_of_wrong_type_is_refused(value: Any) -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("identify", {"userId": value})
    assert caught.value.field == "userId"


def test_oversize_event_in_batch_names_its_index() -> None:
    small = {"type": "track", "userId": "u", "event": "E"}
    big = {**small, "properties": {"blob": "x" * EVENT_MAX_BYTES}}
    with pytest.raises(EventTooLargeError) as caught:
        batch(small, small, big, small)
    assert caught.value.index == 2
    assert "batch[2]" in caught.value.message
    assert "32 KB" in caught.value.message


def test_event_just_under_the_limit_is_accepted() -> None:
    event: dict[str, Any] = {"type": "track", "userId": "u", "event": "E", "properties": {"b": ""}}
    event["properties"]["b"] = "x" * (EVENT_MAX_BYTES - len(body(event)))
    assert len(body(event)) == EVENT_MAX_BYTES
    assert len(batch(event)) == 1


def test_batch_over_limit_is_refused() -> None:
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"b": "x" * 20_000}}
    payload = body({"batch": [item] * 30})
    assert len(payload) > BATCH_MAX_BYTES
    with pytest.raises(BodyTooLargeError):
        parse_batch(payload, NOW)


def test_single_body_over_limit_is_refused() -> None:
    payload = body({"userId": "u", "event": "E", "properties": {"b": "x" * EVENT_MAX_BYTES}})
    with pytest.raises(BodyTooLargeError):
        parse_single("track", payload, NOW)


def test_json_nested_1000_deep_is_refused() -> None:
    deep = b'{"userId": "u", "event": "E", "properties": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    with pytest.raises(NestingTooDeepError) as caught:
        parse_single("track", deep, NOW)
    assert "nests deeper than" in caught.value.message


def test_json_nested_1000_deep_in_batch_names_the_index() -> None:
    deep = b"[" * 1000 + b"]" * 1000
    payload = b'{"batch": [{"type": "track", "userId": "u", "event": "E", "p": ' + deep + b"}]}"
    with pytest.raises(NestingTooDeepError) as caught:
        parse_batch(payload, NOW)
    assert caught.value.index == 0


def nested(levels: int) -> Any:
    """Return a value `levels` objects deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_batch_event_at_the_depth_limit_is_accepted_and_one_level_deeper_names_its_index() -> None:
    small = {"type": "track", "userId": "u", "event": "E"}
    # The event itself is one level; its properties hold the rest.
    at_limit = {**small, "properties": nested(MAX_EVENT_DEPTH - 1)}
    assert len(batch(small, at_limit)) == 2
    with pytest.raises(NestingTooDeepError) as caught:
        batch(small, {**small, "properties": nested(MAX_EVENT_DEPTH)}, small)
    assert caught.value.index == 1


def test_batch_larger_than_one_events_limit_is_measured_event_by_event() -> None:
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"b": "x" * 20_000}}
    assert len(batch(item, item, item)) == 3  # 60 KB in all, each event under 32 KB
    big = {**item, "properties": {"b": "x" * EVENT_MAX_BYTES}}
    with pytest.raises(EventTooLargeError) as caught:
        batch(item, item, big)
    assert caught.value.index == 2


@pytest.mark.parametrize("name", ["context", "integrations"])
def test_batch_wide_object_too_deep_to_merge_is_refused_naming_it(name: str) -> None:
    small = {"type": "track", "userId": "u", "event": "E"}
    # Merged under each event, one level below it: as deep as the limit allows.
    assert batch(small, **{name: nested(MAX_EVENT_DEPTH - 1)})[0][name]
    with pytest.raises(NestingTooDeepError) as caught:
        batch(small, **{name: nested(MAX_EVENT_DEPTH)})
    assert caught.value.field == name
    assert "nests deeper than" in caught.value.message


def test_json_nested_beyond_decoder_limit_is_refused() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(NestingTooDeepError):
        parse_batch(deep, NOW)


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))
    assert len(bomb) < 100 * 1024
    with pytest.raises(BodyTooLargeError) as caught:
        decode_body(bomb, "gzip", BATCH_MAX_BYTES)
    assert "decompressed" in caught.value.message


def test_gzip_body_is_inflated() -> None:
    raw = body({"batch": [], "writeKey": "k"})
    assert decode_body(gzip.compress(raw), "gzip", BATCH_MAX_BYTES) == raw
    assert decode_body(gzip.compress(raw), " GZIP ", len(raw)) == raw


def test_a_gzip_body_of_many_members_is_refused() -> None:
    """Each member copied the rest of the body: 25,000 empty ones before a batch held the
    router's event loop ≈ 200 ms a request, accepted."""
    raw = b'{"batch": []}'
    few = gzip.compress(raw[:5]) + gzip.compress(raw[5:])
    assert decode_body(few, "gzip", BATCH_MAX_BYTES) == raw
    many = gzip.compress(b"", mtime=0) * 25_580 + gzip.compress(raw)
    with pytest.raises(CorruptBodyError, match="members"):
        decode_body(many, "gzip", BATCH_MAX_BYTES)


def test_gzip_exact_fit_is_accepted_and_one_over_refused() -> None:
    raw = b"a" * 1000
    assert decode_body(gzip.compress(raw), "gzip", 1000) == raw
    with pytest.raises(BodyTooLargeError):
        decode_body(gzip.compress(raw), "gzip", 999)


def test_concatenated_gzip_members_share_the_cap() -> None:
    two = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    assert decode_body(two, "gzip", 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(BodyTooLargeError):
        decode_body(two, "gzip", 1000)


@pytest.mark.parametrize("damaged", [b"not gzip at all", gzip.compress(b"x" * 100, mtime=0)[:-10]])
def test_corrupt_gzip_is_refused(damaged: bytes) -> None:
    with pytest.raises(CorruptBodyError):
        decode_body(damaged, "gzip", BATCH_MAX_BYTES)


def test_plain_body_over_cap_is_refused_and_unknown_encoding_rejected() -> None:
    with pytest.raises(BodyTooLargeError):
        decode_body(b"x" * 11, None, 10)
    assert decode_body(b"x" * 10, "identity", 10) == b"x" * 10
    with pytest.raises(UnsupportedEncodingError):
        decode_body(b"x", "br", 10)


def test_non_object_body_and_non_array_batch_are_refused() -> None:
    with pytest.raises(InvalidEventError):
        parse_single("track", b"[1]", NOW)
    with pytest.raises(InvalidRequestError):
        parse_batch(b'"text"', NOW)
    with pytest.raises(InvalidRequestError) as caught:
        parse_batch(b'{"batch": {"type": "track"}}', NOW)
    assert caught.value.field == "batch"


def test_non_object_item_in_batch_is_refused_with_index() -> None:
    with pytest.raises(InvalidEventError) as caught:
        batch({"type": "identify", "userId": "u"}, "oops")
    assert caught.value.index == 1


# --- per-type requirements ------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", 7])
def test_track_needs_event_name(name: Any) -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("track", {"userId": "u", "event": name})
    assert caught.value.field == "event"


def test_alias_needs_user_id_and_previous_id() -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("alias", {"userId": "u"})
    assert caught.value.field == "previousId"
    with pytest.raises(InvalidEventError) as caught:
        single("alias", {"anonymousId": "a", "previousId": "p"})
    assert caught.value.field == "userId"
    assert single("alias", {"userId": "u", "previousId": "p"})["type"] == "alias"


def test_group_needs_group_id() -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("group", {"userId": "u"})
    assert caught.value.field == "groupId"
    assert single("group", {"userId": "u", "groupId": 42})["groupId"] == "42"


def test_delete_is_accepted_in_batch() -> None:
    (event,) = batch({"type": "delete", "userId": "u"})
    assert event["type"] == "delete"


def test_anonymous_id_alone_is_enough_and_integer_ids_become_strings() -> None:
    event = single("page", {"anonymousId": 18446744073709551615})
    assert event["anonymousId"] == "18446744073709551615"
    assert "userId" not in event


def test_null_objects_are_accepted() -> None:
    event = single("track", {"userId": "u", "event": "E", "properties": None})
    assert event["properties"] is None


# --- filling --------------------------------------------------------------------------


def test_fills_message_id_received_at_and_timestamp() -> None:
    event = single("track", {"userId": "u", "event": "E"})
    assert uuid.UUID(event["messageId"]).version == 4
    assert event["receivedAt"] == NOW_TEXT
    assert event["timestamp"] == NOW_TEXT
    assert event["type"] == "track"
    assert "originalTimestamp" not in event


def test_keeps_message_id_unknown_fields_and_library() -> None:
    library = {"name": "analytics-python", "version": "2.3.3"}
    event = single(
        "identify",
        {"userId": "u", "messageId": "m-1", "custom": {"x": [1]}, "context": {"library": library}},
    )
    assert event["messageId"] == "m-1"
    assert event["custom"] == {"x": [1]}
    assert event["context"]["library"] == library


def test_endpoint_decides_the_type() -> None:
    assert single("screen", {"userId": "u", "type": "track"})["type"] == "screen"


def test_received_at_is_always_the_server_clock() -> None:
    assert single("identify", {"userId": "u", "receivedAt": "x"})["receivedAt"] == NOW_TEXT


def test_timestamp_is_corrected_with_sent_at() -> None:
    # The device clock runs 1 h ahead: event 10 s before sending, sent 1 h in "our" future.
    event = single(
        "track",
        {
            "userId": "u",
            "event": "E",
            "timestamp": "2024-05-01T13:00:00.000Z",
            "sentAt": "2024-05-01T13:00:10.000Z",
        },
    )
    assert event["timestamp"] == "2024-05-01T11:59:50.123Z"
    assert event["originalTimestamp"] == "2024-05-01T13:00:00.000Z"
    assert event["sentAt"] == "2024-05-01T13:00:10.000Z"


def test_timestamp_without_sent_at_is_kept_as_sent() -> None:
    event = single("track", {"userId": "u", "event": "E", "timestamp": "2012-12-02T00:30:08.276Z"})
    assert event["timestamp"] == "2012-12-02T00:30:08.276Z"
    assert event["originalTimestamp"] == "2012-12-02T00:30:08.276Z"


def test_original_timestamp_serves_as_client_time() -> None:
    event = single(
        "track",
        {
            "userId": "u",
            "event": "E",
            "originalTimestamp": "2024-05-01T12:00:00+02:00",
            "sentAt": "2024-05-01T12:00:05+02:00",
        },
    )
    assert event["timestamp"] == "2024-05-01T11:59:55.123Z"
    assert event["originalTimestamp"] == "2024-05-01T12:00:00+02:00"


@pytest.mark.parametrize("client", ["2015-2-02T00:30:08.276Z", 1700000000, "yesterday"])
def test_unparseable_timestamp_falls_back_to_received_at(client: Any) -> None:
    event = single("track", {"userId": "u", "event": "E", "timestamp": client, "sentAt": NOW_TEXT})
    assert event["timestamp"] == NOW_TEXT
    assert event["originalTimestamp"] == client


def test_skew_out_of_datetime_range_falls_back_to_received_at() -> None:
    event = single(
        "track",
        {
            "userId": "u",
            "event": "E",
            "timestamp": "0001-01-01T00:00:00Z",
            "sentAt": "9999-12-31T23:59:59Z",
        },
    )
    assert event["timestamp"] == NOW_TEXT


def test_naive_times_are_read_as_utc() -> None:
    event = single(
        "track",
        {
            "userId": "u",
            "event": "E",
            "timestamp": "2024-05-01T10:00:00",
            "sentAt": "2024-05-01T10:00:01",
        },
    )
    assert event["timestamp"] == "2024-05-01T11:59:59.123Z"


def test_batch_sent_at_context_and_integrations_apply_to_items() -> None:
    events = batch(
        {"type": "track", "userId": "u", "event": "E", "timestamp": "2024-05-01T11:00:00Z"},
        {
            "type": "identify",
            "userId": "u",
            "context": {"ip": "10.0.0.1"},
            "integrations": {"All": True},
            "sentAt": "2024-05-01T11:00:30Z",
            "timestamp": "2024-05-01T11:00:00Z",
        },
        sentAt="2024-05-01T11:01:00Z",
        context={"ip": "1.2.3.4", "locale": "fr"},
        integrations={"All": False},
    )
    assert events[0]["timestamp"] == "2024-05-01T11:59:00.123Z"
    assert events[0]["context"] == {"ip": "1.2.3.4", "locale": "fr"}
    assert events[0]["integrations"] == {"All": False}
    assert events[1]["timestamp"] == "2024-05-01T11:59:30.123Z"
    assert events[1]["context"] == {"ip": "10.0.0.1", "locale": "fr"}
    assert events[1]["integrations"] == {"All": True}


def test_batch_context_that_takes_an_event_past_its_limit_is_refused_naming_the_event() -> None:
    small = {"type": "track", "userId": "u", "event": "E"}
    fits = {"pad": "x" * (EVENT_MAX_BYTES - 200)}
    assert batch(small, context=fits)[0]["context"] == fits
    big = {**small, "properties": {"p": "y" * 400}}
    with pytest.raises(EventTooLargeError, match="context and integrations merged") as caught:
        batch(small, big, context=fits)
    assert caught.value.index == 1


def test_batch_whose_merged_events_outgrow_what_a_batch_may_store_is_refused() -> None:
    """A shared context is stored once per event: 100 events and 16 KB make 1.6 MB."""
    items = [{"type": "track", "userId": f"u{i}", "event": "E"} for i in range(100)]
    context = {"pad": "x" * (16 * 1024)}
    assert len(body({"batch": items, "context": context})) < BATCH_MAX_BYTES // 20
    with pytest.raises(InvalidRequestError, match=f"{MERGED_BATCH_MAX_BYTES // 1024} KB"):
        batch(*items, context=context)
    assert len(batch(*items[:50], context=context)) == 50


@settings(max_examples=200)
@given(
    st.integers(1, 400),
    st.integers(0, 40 * 1024),
    st.integers(0, 2 * 1024),
    st.integers(0, 4 * 1024),
)
def test_events_as_stored_keep_the_limits_whatever_the_batch_shares(
    count: int, context_pad: int, integrations_pad: int, own_pad: int
) -> None:
    items = [
        {"type": "track", "userId": "u", "event": "E", "properties": {"p": "z" * own_pad}}
        for _ in range(count)
    ]
    top = {"context": {"pad": "x" * context_pad}, "integrations": {"pad": "y" * integrations_pad}}
    raw = body({"batch": items, **top})
    try:
        events = parse_batch(raw, NOW).events
    except InvalidRequestError:
        return
    sizes = [len(orjson.dumps(event)) for event in events]
    assert max(sizes) <= EVENT_MAX_BYTES
    assert sum(sizes) <= MERGED_BATCH_MAX_BYTES


def test_batch_top_level_context_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        batch({"type": "identify", "userId": "u"}, context=[1])
    assert caught.value.field == "context"


def test_write_key_is_returned_and_removed_from_events() -> None:
    parsed = parse_single("track", body({"userId": "u", "event": "E", "writeKey": "wk"}), NOW)
    assert parsed.write_key == "wk"
    assert "writeKey" not in parsed.events[0]
    parsed = parse_batch(
        body({"writeKey": "wk", "batch": [{"type": "identify", "userId": "u", "writeKey": "wk"}]}),
        NOW,
    )
    assert parsed.write_key == "wk"
    assert "writeKey" not in parsed.events[0]


def test_write_key_can_come_from_the_items_only() -> None:
    item = {"type": "identify", "userId": "u", "writeKey": "wk"}
    assert parse_batch(body({"batch": [item, item]}), NOW).write_key == "wk"
    assert (
        parse_batch(body({"batch": [{"type": "identify", "userId": "u"}]}), NOW).write_key is None
    )


def test_conflicting_or_non_string_write_keys_are_refused() -> None:
    one = {"type": "identify", "userId": "u", "writeKey": "a"}
    other = {"type": "identify", "userId": "u", "writeKey": "b"}
    with pytest.raises(InvalidRequestError) as caught:
        parse_batch(body({"batch": [one, other]}), NOW)
    assert caught.value.index == 1
    with pytest.raises(InvalidRequestError):
        parse_single("track", body({"userId": "u", "event": "E", "writeKey": 5}), NOW)


def test_message_id_of_wrong_type_is_refused() -> None:
    with pytest.raises(InvalidEventError) as caught:
        single("identify", {"userId": "u", "messageId": {"id": 1}})
    assert caught.value.field == "messageId"


def test_a_message_id_too_long_for_a_packs_headers_is_refused() -> None:
    """A messageId rides in the headers of its pack, which JetStream bounds: one of 22,000
    characters made every publish of its source wait for the timeout (503) and retried."""
    assert single("identify", {"userId": "u", "messageId": "m" * 256})["messageId"] == "m" * 256
    with pytest.raises(InvalidEventError) as caught:
        single("identify", {"userId": "u", "messageId": "m" * 257})
    assert caught.value.field == "messageId" and "256" in caught.value.reason


def test_normalize_events_takes_decoded_items() -> None:
    events = normalize_events([{"type": "identify", "userId": "u"}], NOW)
    assert events[0]["receivedAt"] == NOW_TEXT


def test_format_time_converts_to_utc_milliseconds() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC) + timedelta(hours=0)
    assert format_time(moment) == "2024-01-02T03:04:05.678Z"


# --- properties -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=8), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_request_errors(raw: bytes) -> None:
    for parse in (lambda: parse_batch(raw, NOW), lambda: parse_single("track", raw, NOW)):
        try:
            parse()
        except InvalidRequestError:
            pass


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)
known_fields = st.fixed_dictionaries(
    {},
    optional={
        "userId": texts | json_values,
        "anonymousId": texts | json_values,
        "event": texts | json_values,
        "previousId": texts,
        "groupId": texts,
        "messageId": texts | json_values,
        "timestamp": times.map(format_time) | json_values,
        "sentAt": times.map(format_time) | json_values,
        "properties": json_values,
        "writeKey": texts,
    },
)


@settings(max_examples=400)
@given(
    st.dictionaries(texts, json_values, max_size=5),
    known_fields,
    st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "delete", "x"]),
)
def test_random_events_are_refused_cleanly_or_filled(
    extra: dict[str, Any], known: dict[str, Any], kind: str
) -> None:
    item = {**extra, **known, "type": kind}
    try:
        (event,) = parse_batch(body({"batch": [item]}), NOW).events
    except InvalidRequestError:
        return
    assert event["receivedAt"] == NOW_TEXT
    assert type(event["messageId"]) is str and event["messageId"]
    assert type(event["timestamp"]) is str
    assert type(event.get("userId") or event.get("anonymousId")) is str
    assert "writeKey" not in event
    filled = {"messageId", "receivedAt", "timestamp", "originalTimestamp", "writeKey"}
    ids = {"userId", "anonymousId", "previousId", "groupId"}
    for key, value in item.items():
        if key in ids and type(value) is int:
            assert event[key] == str(value)
        elif key not in filled:
            assert event[key] == value


@given(times, times)
def test_corrected_timestamp_keeps_the_gap_between_occurrence_and_sending(
    occurred: datetime, sent: datetime
) -> None:
    event = single(
        "track",
        {
            "userId": "u",
            "event": "E",
            "timestamp": format_time(occurred),
            "sentAt": format_time(sent),
        },
    )
    corrected = datetime.fromisoformat(event["timestamp"])
    gap = sent.replace(microsecond=sent.microsecond // 1000 * 1000) - occurred.replace(
        microsecond=occurred.microsecond // 1000 * 1000
    )
    assert corrected == NOW - gap
    assert event["originalTimestamp"] == format_time(occurred)


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        (r"\ud83d", "\ufffd"),  # the high half of an emoji, cut by substring()
        (r"cut \ude00 low", "cut \ufffd low"),
        (r"\ud83d\ud83d\ude00", "\ufffd\U0001f600"),
        (r"\ud83d\u0041", "\ufffdA"),
        (r"\\ud83d", r"\ud83d"),  # an escaped backslash, then text
        (r"\\\ud83d", "\\\ufffd"),
    ],
)
def test_an_escaped_lone_surrogate_is_read_as_a_replacement_character(
    escaped: str, text: str
) -> None:
    # JavaScript's JSON.stringify writes a lone surrogate escaped; Segment's API reads it.
    parsed = parse_single("track", f'{{"userId": "u", "event": "{escaped}"}}'.encode(), NOW)
    assert parsed.events[0]["event"] == text


@given(
    st.lists(st.sampled_from(["a", "\\\\", r"\ud83d", r"\ude00", r"\u0041", '\\"']), max_size=12)
)
def test_any_surrogate_escapes_parse_as_javascript_reads_them(parts: list[str]) -> None:
    # As JSON.parse, then written as UTF-8 (a lone surrogate as U+FFFD).
    text = "".join(parts)
    expected = json.loads(f'"{text}"').encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert parse_json(f'["{text}"]'.encode()) == [expected]
