"""Stream topology: subjects round-trip, streams are created idempotently with the right config."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from services.common import streams
from services.common.streams import (
    DEAD_STREAM,
    EVENTS_STREAM,
    RETRY_STREAM,
    InvalidSubjectTokenError,
    Subject,
    config_drift,
    dead_subject,
    ensure_streams,
    events_subject,
    parse_subject,
    retry_subject,
    stream_configs,
    subject_filter,
)
from services.devtools.embedded import EmbeddedNats

tokens = st.text(min_size=1, max_size=40).filter(
    lambda s: not any(c in ".*>" or c.isspace() for c in s)
)
kinds = st.sampled_from(["events", "retry", "dead"])


@given(kind=kinds, workspace=tokens, instance=tokens)
def test_subject_round_trips(kind: streams.SubjectKind, workspace: str, instance: str) -> None:
    built = streams.subject(kind, workspace, instance)
    assert parse_subject(built) == Subject(kind, workspace, instance)


def test_subject_builders_use_their_kind() -> None:
    assert events_subject("w1", "i1") == "events.w1.i1"
    assert retry_subject("w1", "i1") == "retry.w1.i1"
    assert dead_subject("w1", "i1") == "dead.w1.i1"


@given(
    good=tokens,
    bad=st.text(min_size=0, max_size=10).filter(
        lambda s: s == "" or any(c in ".*>" or c.isspace() for c in s)
    ),
)
def test_bad_tokens_are_refused_in_either_position(good: str, bad: str) -> None:
    with pytest.raises(InvalidSubjectTokenError, match="workspace id"):
        events_subject(bad, good)
    with pytest.raises(InvalidSubjectTokenError, match="instance id"):
        events_subject(good, bad)


@pytest.mark.parametrize(
    "value",
    ["events.w1", "events.w1.i1.extra", "other.w1.i1", "events..i1", "events.w1.*", "events.>"],
)
def test_parse_subject_rejects_non_eventfn_subjects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_subject(value)


def test_subject_filters() -> None:
    assert subject_filter("events") == "events.>"
    assert subject_filter("dead", "w1") == "dead.w1.*"
    assert subject_filter("dead", "w1", "i1") == "dead.w1.i1"
    assert subject_filter("retry", instance_id="i1") == "retry.*.i1"


@pytest.mark.parametrize("replicas", [0, 2, 4, 6])
def test_even_or_zero_replicas_are_refused(replicas: int) -> None:
    with pytest.raises(ValueError, match="replicas"):
        stream_configs(replicas=replicas)


DAY = 86400.0
# What the topology must be, whatever the code's table says. Nothing accepted is dropped:
# limits retention keeps events with or without a consumer, `discard: new` makes a full
# stream refuse publishes rather than drop stored events, the file store survives restarts.
EVERY_STREAM: dict[str, Any] = {
    "retention": RetentionPolicy.LIMITS,
    "discard": DiscardPolicy.NEW,
    "storage": StorageType.FILE,
    "num_replicas": 1,  # the default; the session server is a single node
}
EACH_STREAM: dict[str, dict[str, Any]] = {
    EVENTS_STREAM: {"subjects": ["events.>"], "max_age": 7 * DAY, "duplicate_window": 600.0},
    # RETRY and DEAD: the server's default window, for hand-off and retry ids.
    # RETRY: bounded per instance, and a full instance's new retries refused (the executor
    # dead-letters them), never its stored ones dropped.
    RETRY_STREAM: {
        "subjects": ["retry.>"],
        "max_age": 2 * DAY,
        "duplicate_window": 120.0,
        "discard_new_per_subject": True,
    },
    DEAD_STREAM: {"subjects": ["dead.>"], "max_age": 14 * DAY, "duplicate_window": 120.0},
}
# The fields that decide whether an event is kept, where it goes, and how it is deduplicated.
FIELDS = (
    "subjects",
    "retention",
    "discard",
    "storage",
    "num_replicas",
    "max_age",
    "duplicate_window",
)


def differences(have: StreamConfig, want: StreamConfig) -> dict[str, tuple[Any, Any]]:
    """Return {field: (server's, wanted)} where the server's config differs from the wanted
    one in a field that matters, or in one the wanted config sets (durations to 1 µs)."""
    out: dict[str, tuple[Any, Any]] = {}
    for name in (*FIELDS, "allow_direct", "description"):
        theirs, ours = getattr(have, name), getattr(want, name)
        if ours is None and name not in FIELDS:
            continue  # left to the server
        if isinstance(ours, float) and isinstance(theirs, float):
            same = abs(theirs - ours) < 1e-6
        else:
            same = theirs == ours
        if not same:
            out[name] = (theirs, ours)
    return out


@contextlib.asynccontextmanager
async def stream_changes(nc: NatsClient) -> AsyncIterator[Callable[[], Awaitable[list[str]]]]:
    """Watch the JetStream API requests that create, update or delete a stream (a plain
    subscriber gets a copy of every request); yield a function returning those seen."""
    sub = await nc.subscribe("$JS.API.STREAM.*.*")
    await nc.flush()

    async def seen() -> list[str]:
        await nc.flush()  # a request sent before this is in the subscription's queue now
        subjects = []
        while sub.pending_msgs:
            subjects.append((await sub.next_msg()).subject)
        return [s for s in subjects if s.split(".")[3] in ("CREATE", "UPDATE", "DELETE")]

    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def test_desired_config_keeps_every_event_and_is_drift_free(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    # The defaults every service passes (stream_replicas 1, dead_retention_days 14).
    await ensure_streams(js)
    desired = {c.name: c for c in stream_configs()}
    assert set(desired) == set(EACH_STREAM)
    for name, config in desired.items():
        have = (await js.stream_info(name)).config
        # The server holds what the code asked for...
        assert differences(have, config) == {}, name
        # ...which is what the topology must be...
        for field, value in {**EVERY_STREAM, **EACH_STREAM[name]}.items():
            assert getattr(have, field) == value, (name, field)
        # ...and what the server reports back reads as no drift, so no update at each start.
        assert config_drift(have, config) == [], name
    async with stream_changes(nats_client) as seen:
        await ensure_streams(js)
        assert await seen() == [], "a second ensure changed streams that were up to date"


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsClient]:
    """A NATS server of one test's own: its streams can be broken without harming others."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        client = await nats.connect(server.url)
        yield client
        await client.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("stream", "field", "edited"),
    [
        (EVENTS_STREAM, "max_age", 3600.0),
        (EVENTS_STREAM, "duplicate_window", 5.0),
        (EVENTS_STREAM, "discard", DiscardPolicy.OLD),
        (RETRY_STREAM, "retention", RetentionPolicy.INTEREST),
        (RETRY_STREAM, "subjects", ["retry.>", "elsewhere.>"]),
        (DEAD_STREAM, "allow_direct", False),
        (DEAD_STREAM, "description", "edited by hand"),
    ],
)
async def test_a_stream_edited_on_the_server_is_put_back(
    own_nats: NatsClient, stream: str, field: str, edited: Any
) -> None:
    js = own_nats.jetstream()
    await ensure_streams(js)
    await js.publish(f"{stream.lower()}.w1.i1", b"[]")
    info = await js.stream_info(stream)
    await js.update_stream(info.config.evolve(**{field: edited}))
    edited_info = await js.stream_info(stream)
    assert getattr(edited_info.config, field) == edited
    # (Interest retention drops it at once, no consumer being there: why LIMITS matters.)
    stored = edited_info.state.messages
    async with stream_changes(own_nats) as seen:
        await ensure_streams(js)
        assert await seen() == [f"$JS.API.STREAM.UPDATE.{stream}"]
        after = await js.stream_info(stream)
        assert after.state.messages == stored, "putting the config back lost events"
        assert after.created == info.created, "recreated, not updated"
        want = next(c for c in stream_configs() if c.name == stream)
        assert differences(after.config, want) == {}
        assert getattr(after.config, field) == getattr(want, field)
        await ensure_streams(js)
        assert await seen() == [], "still drifting after the update"


@pytest.mark.parametrize(
    ("stream", "field", "edited"),
    [
        (EVENTS_STREAM, "storage", StorageType.MEMORY),
        (RETRY_STREAM, "retention", RetentionPolicy.WORK_QUEUE),
    ],
)
async def test_a_drift_the_server_cannot_undo_is_reported_and_the_stream_kept(
    own_nats: NatsClient, stream: str, field: str, edited: Any
) -> None:
    js = own_nats.jetstream()
    want = next(c for c in stream_configs() if c.name == stream)
    await js.add_stream(want.evolve(**{field: edited}))  # made by hand, the wrong way
    await js.publish(f"{stream.lower()}.w1.i1", b"[]")
    async with stream_changes(own_nats) as seen:
        with pytest.raises(
            streams.StreamTopologyError, match=f"stream {stream} differs in {field}"
        ):
            await ensure_streams(js)
        # Tried to update it, and neither deleted nor recreated it: its events are kept.
        changes = [s for s in await seen() if s.endswith(f".{stream}")]
        assert changes == [f"$JS.API.STREAM.UPDATE.{stream}"]
    info = await js.stream_info(stream)
    assert getattr(info.config, field) == edited
    assert info.state.messages == 1


async def test_the_dead_retention_setting_reaches_the_server(own_nats: NatsClient) -> None:
    js = own_nats.jetstream()
    await ensure_streams(js)
    async with stream_changes(own_nats) as seen:
        await ensure_streams(js, dead_max_age=timedelta(days=3))
        assert await seen() == [f"$JS.API.STREAM.UPDATE.{DEAD_STREAM}"]
    assert (await js.stream_info(DEAD_STREAM)).config.max_age == 3 * DAY
    assert (await js.stream_info(EVENTS_STREAM)).config.max_age == 7 * DAY


async def test_retries_of_an_earlier_version_are_kept_when_the_bound_is_added(
    own_nats: NatsClient,
) -> None:
    js = own_nats.jetstream()
    unbounded = next(c for c in stream_configs() if c.name == RETRY_STREAM).evolve(
        max_msgs_per_subject=None, discard_new_per_subject=None
    )
    await js.add_stream(unbounded)  # as an earlier version made it
    held = [(await js.publish("retry.w1.i1", b"[]")).seq for _ in range(5)]
    await ensure_streams(js, retry_max_per_instance=3)
    info = await js.stream_info(RETRY_STREAM)
    assert info.state.messages == 5, "bounding RETRY dropped held retries"
    assert info.config.max_msgs_per_subject >= 5
    for seq in held:  # the retrier settles them
        await js.delete_msg(RETRY_STREAM, seq)
    await ensure_streams(js, retry_max_per_instance=3)  # the next start bounds it
    assert (await js.stream_info(RETRY_STREAM)).config.max_msgs_per_subject == 3
    for _ in range(3):
        await js.publish("retry.w1.i1", b"[]")
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.publish("retry.w1.i1", b"[]")
    assert streams.subject_full(refused.value)
    await js.publish("retry.w1.i2", b"[]")  # another instance's retries are not refused
    assert (await js.stream_info(RETRY_STREAM)).state.messages == 4


async def test_events_are_deduplicated_by_msg_id(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    subject = events_subject("ws-dedupe", uuid.uuid4().hex)
    headers = {streams.MSG_ID: f"pack-{uuid.uuid4().hex}"}
    first = await js.publish(subject, b"[]", headers=headers)
    again = await js.publish(subject, b"[]", headers=headers)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq


async def test_replicas_beyond_the_cluster_size_fail_clearly(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    # The session server is a single node: R3 cannot be placed.
    with pytest.raises(streams.StreamTopologyError, match="num_replicas"):
        await ensure_streams(js, replicas=3)
