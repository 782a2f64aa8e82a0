"""The retrier's scheduling plan, malformed RETRY messages, and the dead-letter store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from services.common import streams
from services.retrier.backoff import RetryPolicy
from services.retrier.dead_letters import DeadLetterStore, LetterId
from services.retrier.scheduler import (
    DEAD_REASON,
    UNROUTABLE_DEAD_SUBJECT,
    Bury,
    Hold,
    MalformedRetry,
    Republish,
    RetryMessage,
    parse_retry,
    parse_time,
    plan,
)
from tests.eventually import eventually
from tests.retrier.conftest import StartRetrier

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EVENTS = b'[{"type":"track","messageId":"m-1"}]'


def retry_headers(**changes: str | None) -> dict[str, str]:
    headers = {
        streams.ATTEMPT: "1",
        streams.FIRST_ATTEMPT_AT: T0.isoformat(),
        streams.MSG_ID: "ins_x:abc:retry1",
        "Eventfn-History": '[{"attempt": 1, "time": "2026-01-01T12:00:00+00:00", "error": "e"}]',
    }
    for name, value in changes.items():
        key = {"attempt": streams.ATTEMPT, "first": streams.FIRST_ATTEMPT_AT}.get(name, name)
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


def message(attempt: int = 1, first: datetime = T0) -> RetryMessage:
    return parse_retry(
        "retry.ws_1.ins_1",
        retry_headers(attempt=str(attempt), first=first.isoformat()),
        EVENTS,
        7,
    )


# --- pure parts ------------------------------------------------------------------------------


def test_parse_time_takes_nanoseconds_and_z() -> None:
    assert parse_time("2026-01-01T12:00:00.123456789Z") == T0 + timedelta(microseconds=123456)
    with pytest.raises(ValueError):
        parse_time("2026-01-01T12:00:00")


@pytest.mark.parametrize(
    ("subject", "headers", "body", "complaint"),
    [
        ("retry.ws_1", retry_headers(), EVENTS, "is not retry.<workspace>.<instance>"),
        ("retry.ws_1.ins_1", retry_headers(attempt=None), EVENTS, "Eventfn-Attempt is missing"),
        ("retry.ws_1.ins_1", retry_headers(attempt="0"), EVENTS, "not an integer >= 1"),
        ("retry.ws_1.ins_1", retry_headers(attempt="two"), EVENTS, "not an integer >= 1"),
        ("retry.ws_1.ins_1", retry_headers(first=None), EVENTS, "First-Attempt-At is missing"),
        ("retry.ws_1.ins_1", retry_headers(first="yesterday"), EVENTS, "not an ISO 8601"),
        ("retry.ws_1.ins_1", retry_headers(first="2026-01-01T12:00:00"), EVENTS, "not an ISO"),
        ("retry.ws_1.ins_1", retry_headers(**{"Eventfn-History": "{"}), EVENTS, "JSON list"),
        ("retry.ws_1.ins_1", retry_headers(), b"not json", "body is not JSON"),
        ("retry.ws_1.ins_1", retry_headers(), b'{"type":"track"}', "non-empty JSON array"),
        ("retry.ws_1.ins_1", retry_headers(), b"[]", "non-empty JSON array"),
        ("retry.ws_1.ins_1", retry_headers(), b"[1, 2]", "not a JSON object"),
    ],
)
def test_malformed_retry_messages_are_named(
    subject: str, headers: dict[str, str], body: bytes, complaint: str
) -> None:
    with pytest.raises(MalformedRetry, match=complaint.replace("<", ".").replace(">", ".")):
        parse_retry(subject, headers, body, 1)


def test_not_due_is_held_and_the_hold_is_stable_across_redeliveries() -> None:
    policy = RetryPolicy(base=timedelta(seconds=60), cap=timedelta(seconds=60))
    holds = {plan(policy, message(), stored_at=T0, now=T0) for _ in range(5)}
    assert len(holds) == 1
    (hold,) = holds
    assert isinstance(hold, Hold) and 0 < hold.seconds <= 60
    # Asked again later (a redelivery), the remaining wait shrinks by the time passed.
    later = plan(policy, message(), stored_at=T0, now=T0 + timedelta(seconds=hold.seconds))
    assert isinstance(later, Republish)


def test_due_republishes_with_the_next_attempt_and_a_new_dedupe_id() -> None:
    policy = RetryPolicy(base=timedelta(seconds=1), cap=timedelta(seconds=1))
    out = plan(policy, message(attempt=3), stored_at=T0, now=T0 + timedelta(seconds=2))
    assert isinstance(out, Republish)
    assert out.subject == "events.ws_1.ins_1"
    assert out.headers[streams.ATTEMPT] == "4"
    assert out.headers[streams.MSG_ID] == "ins_x:abc:retry1:r4"
    assert parse_time(out.headers[streams.FIRST_ATTEMPT_AT]) == T0
    assert "Eventfn-History" in out.headers


def test_past_the_window_goes_to_dead_with_the_reason() -> None:
    policy = RetryPolicy(window=timedelta(hours=4))
    out = plan(policy, message(attempt=9), stored_at=T0 + timedelta(hours=4), now=T0)
    assert isinstance(out, Bury)
    assert out.subject == "dead.ws_1.ins_1"
    assert "retry window of 4:00:00" in out.headers[DEAD_REASON]


def test_a_first_attempt_in_the_future_is_clamped_and_carried_forward() -> None:
    policy = RetryPolicy(base=timedelta(seconds=1), cap=timedelta(seconds=1))
    skewed = message(first=T0 + timedelta(hours=3))
    out = plan(policy, skewed, stored_at=T0, now=T0 + timedelta(seconds=2))
    assert isinstance(out, Republish)
    # The window restarts at the time the retrier saw it, not three hours ahead.
    assert parse_time(out.headers[streams.FIRST_ATTEMPT_AT]) == T0


# --- against NATS ----------------------------------------------------------------------------


async def dead_packs(nc: NatsClient, instance_id: str, count: int) -> list:
    """Wait until the instance has `count` DEAD messages; return them, oldest first."""
    store = DeadLetterStore(nc, nc.jetstream())

    async def scan() -> list:
        return [p async for p in store.scan(instance_id)]

    return await eventually(
        scan, f"{count} dead messages of {instance_id}", until=lambda p: len(p) >= count
    )


@pytest.mark.parametrize(
    ("headers", "body", "complaint"),
    [
        (retry_headers(attempt="zero"), EVENTS, "Eventfn-Attempt is 'zero'"),
        (retry_headers(first=None), EVENTS, "Eventfn-First-Attempt-At is missing"),
        (retry_headers(), b"\xff\xfe not json", "body is not JSON"),
    ],
)
async def test_a_malformed_retry_message_goes_to_dead_with_its_reason(
    start_retrier_on: StartRetrier,
    nats_client: NatsClient,
    headers: dict[str, str],
    body: bytes,
    complaint: str,
) -> None:
    retrier, _ = await start_retrier_on()
    instance = f"ins_{uuid.uuid4().hex[:12]}"
    js = nats_client.jetstream()
    headers = {**headers, streams.MSG_ID: f"bad-{instance}"}
    sent = await js.publish(f"retry.ws_bad.{instance}", body, headers=headers)
    (pack,) = await dead_packs(nats_client, instance, 1)
    assert pack.subject == f"dead.ws_bad.{instance}"
    assert complaint in pack.headers[DEAD_REASON]
    assert pack.data == body
    # Settled once, not handed back to come again: the scheduler keeps working on others.
    await retrier.scheduler.wait_for(lambda c: c["malformed"] >= 1)
    with pytest.raises(NotFoundError):
        await js.get_msg(streams.RETRY_STREAM, sent.seq)  # removed from RETRY, then acked


async def test_a_retry_message_naming_no_instance_goes_to_the_invalid_dead_subject(
    start_retrier_on: StartRetrier, nats_client: NatsClient
) -> None:
    await start_retrier_on()
    js = nats_client.jetstream()
    subject = f"retry.two-tokens-{uuid.uuid4().hex}"
    await js.publish(subject, EVENTS, headers={streams.MSG_ID: subject})
    store = DeadLetterStore(nats_client, js)

    async def scan() -> list:
        return [
            p
            async for p in store.scan("_invalid")
            if p.headers.get("Eventfn-Original-Subject") == subject
        ]

    found = await eventually(scan, f"a dead letter of {subject}", seconds=20)
    assert found[0].subject == UNROUTABLE_DEAD_SUBJECT
    assert "is not retry.<workspace>.<instance>" in found[0].headers[DEAD_REASON]


async def test_dead_letters_page_newest_first_and_purge(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await streams.ensure_streams(js)
    instance = f"ins_{uuid.uuid4().hex[:12]}"
    for n in range(5):
        events = [{"type": "track", "messageId": f"m-{n}-{i}"} for i in range(2)]
        await js.publish(
            f"dead.ws_1.{instance}",
            orjson.dumps(events),
            headers={streams.ATTEMPT: "3", DEAD_REASON: "window over"},
        )
    store = DeadLetterStore(nats_client, js)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.page(
            "ws_1", instance, start=None, end=None, size=3, before=cursor
        )
        seen += [letter.message_id for letter in page]
        if cursor is None:
            break
    assert seen == [f"m-{n}-{i}" for n in reversed(range(5)) for i in reversed(range(2))]
    packs = [p async for p in store.scan(instance)]
    chosen = await store.select(instance, [LetterId(packs[0].seq, 1)])
    assert [c.message_id for c in chosen] == ["m-0-1"]
    # A time range: nothing stored after now.
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert [p async for p in store.scan(instance, start=later)] == []
    assert len([p async for p in store.scan(instance, start=packs[1].time)]) == 4
    # Purging one letter deletes it alone; its pack-mate stays, stored again.
    assert await store.purge(chosen) == 1
    left = [c.message_id for c in await store.select(instance, [])]
    assert sorted(left) == sorted({f"m-{n}-{i}" for n in range(5) for i in range(2)} - {"m-0-1"})
    # A pack named without an index goes whole.
    assert await store.purge(await store.select(instance, [LetterId(packs[1].seq)])) == 2
    assert await store.purge(await store.select(instance, [])) == 7
