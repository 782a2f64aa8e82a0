"""Stream topology: subjects round-trip, streams are created idempotently with the right config."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

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


@given(replicas=st.sampled_from([1, 3, 5]), days=st.integers(1, 365))
def test_desired_config_keeps_every_event_and_is_drift_free(replicas: int, days: int) -> None:
    configs = stream_configs(replicas=replicas, dead_max_age=timedelta(days=days))
    assert [c.name for c in configs] == [EVENTS_STREAM, RETRY_STREAM, DEAD_STREAM]
    for config in configs:
        assert config.storage == StorageType.FILE
        assert config.retention == RetentionPolicy.LIMITS
        # A full stream must refuse new publishes, not drop stored, unprocessed events.
        assert config.discard == DiscardPolicy.NEW
        assert config.num_replicas == replicas
        assert config_drift(config, config) == []
    assert configs[2].max_age == days * 86400


async def test_ensure_streams_creates_the_topology(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    events = await js.stream_info(EVENTS_STREAM)
    assert events.config.subjects == ["events.>"]
    assert events.config.storage == StorageType.FILE
    assert events.config.duplicate_window == 600
    assert (await js.stream_info(RETRY_STREAM)).config.subjects == ["retry.>"]
    dead = await js.stream_info(DEAD_STREAM)
    assert dead.config.subjects == ["dead.>"]
    assert dead.config.max_age == 14 * 86400


async def test_ensure_streams_is_idempotent_and_updates_drift(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    before = await js.stream_info(EVENTS_STREAM)
    await ensure_streams(js)
    assert (await js.stream_info(EVENTS_STREAM)).created == before.created
    await ensure_streams(js, dead_max_age=timedelta(days=3))
    assert (await js.stream_info(DEAD_STREAM)).config.max_age == 3 * 86400
    await ensure_streams(js)
    assert (await js.stream_info(DEAD_STREAM)).config.max_age == 14 * 86400


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
