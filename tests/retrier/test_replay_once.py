"""Issue 11: a replayed dead letter leaves DEAD, so it is sent once; a crash between the replay
and the removal loses nothing and sends nothing twice; the rest of a pack stays."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, timedelta
from typing import Any

import grpc
import nats.errors
import pytest

from eventfn_api.retrier.v1 import retrier_pb2 as pb
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_parity_batching import event, post_batch
from tests.registry.conftest import auth
from tests.retrier.conftest import OperationFailed, RetrierClient, StartRetrier, public_id, seq_of

# A plain Error is a failure: dead-lettered on the first attempt, no retry window to wait.
FAILS_ON_500 = """
async function onTrack(event, settings) {
  const body = JSON.stringify(event)
  const res = await fetch(settings.endpoint + '/track', {method: 'POST', body})
  if (res.status >= 500) throw new Error('HTTP ' + res.status)
}
"""


async def dead_letters(stub: RetrierClient, owner: str, instance: str) -> list[pb.DeadLetter]:
    """List every dead letter of the instance (its name), newest first."""
    resp = await stub.ListDeadLetters(
        pb.ListDeadLettersRequest(parent=instance, page_size=500), metadata=auth(owner)
    )
    return list(resp.dead_letters)


async def until_letters(
    stub: RetrierClient,
    owner: str,
    instance_id: str,
    count: int,
    seconds: float = 30,
) -> list[pb.DeadLetter]:
    """Poll until the instance has exactly `count` dead letters; return them."""
    return await eventually(
        lambda: dead_letters(stub, owner, instance_id),
        f"{count} dead letters of {instance_id}",
        until=lambda letters: len(letters) == count,
        seconds=seconds,
    )


async def replay(stub: RetrierClient, owner: str, instance: str, *letters: str) -> int:
    """Replay letters by name (all without names), to the end of the operation; return how
    many were replayed."""
    return await stub.replay(
        pb.ReplayDeadLettersRequest(parent=instance, names=list(letters)), metadata=auth(owner)
    )


def delivered(sink: Sink, since: int) -> Counter[str]:
    """Count the messageIds the sink received from request `since` on."""
    return Counter(str(b["messageId"]) for b in sink.bodies[since:])


async def settled(sink: Sink, count: int, seconds: float = 1.0) -> None:
    """Wait for `count` requests, then check no more arrive within `seconds`."""
    async with asyncio.timeout(30), sink.changed:
        await sink.changed.wait_for(lambda: len(sink.bodies) >= count)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds), sink.changed:
            await sink.changed.wait_for(lambda: len(sink.bodies) > count)


async def dead_pack(platform: Platform, sink: Sink, start: StartRetrier, ids: list[str]) -> Any:
    """Make one pack of events fail into DEAD; return (instance, retrier, stub, letters)."""
    retrier, stub = await start()
    sink.status = 500
    iid = await platform.instance(FAILS_ON_500, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await post_batch(platform, [event("track", m) for m in ids])
    letters = await until_letters(stub, platform.owner, platform.instance_name(iid), len(ids))
    await settled(sink, len(ids))
    sink.status = 200
    return iid, retrier, stub, letters


async def test_replay_all_twice_sends_each_event_once(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    ids = ["once-0", "once-1", "once-2"]
    iid, _, stub, letters = await dead_pack(platform, sink, start_retrier_on, ids)
    assert {letter.message_id for letter in letters} == set(ids)
    before = len(sink.bodies)
    assert await replay(stub, platform.owner, platform.instance_name(iid)) == 3
    await settled(sink, before + 3)
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == [], (
        "replayed letters left DEAD"
    )
    assert await replay(stub, platform.owner, platform.instance_name(iid)) == 0, (
        "nothing left to replay"
    )
    await settled(sink, before + 3)
    assert delivered(sink, before) == Counter(ids)


async def test_replaying_part_of_a_pack_keeps_the_rest_listed(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    ids = ["part-0", "part-1", "part-2"]
    iid, _, stub, letters = await dead_pack(platform, sink, start_retrier_on, ids)
    by_message = {letter.message_id: letter for letter in letters}
    chosen = by_message["part-1"]
    before = len(sink.bodies)
    assert await replay(stub, platform.owner, platform.instance_name(iid), chosen.name) == 1
    await settled(sink, before + 1)
    rest = await dead_letters(stub, platform.owner, platform.instance_name(iid))
    assert sorted(letter.message_id for letter in rest) == ["part-0", "part-2"]
    assert chosen.name not in {letter.name for letter in rest}
    for letter in rest:  # the same letters, with their history and the time they died
        original = by_message[letter.message_id]
        assert letter.dead_time == original.dead_time
        assert letter.reason == original.reason
        assert letter.event_json == original.event_json
    # Time ranges go by when they died, not by when they were stored again.
    died = by_message["part-0"].dead_time.ToDatetime(tzinfo=UTC)
    for start, end, expected in [
        (None, died + timedelta(milliseconds=1), 2),
        (died + timedelta(milliseconds=1), None, 0),
        (died - timedelta(seconds=1), died + timedelta(milliseconds=1), 2),
    ]:
        request = pb.ListDeadLettersRequest(parent=platform.instance_name(iid))
        if start is not None:
            request.start_time.FromDatetime(start)
        if end is not None:
            request.end_time.FromDatetime(end)
        listed = await stub.ListDeadLetters(request, metadata=auth(platform.owner))
        assert len(listed.dead_letters) == expected, (start, end)
    # The old id is gone: replaying it again is refused (like an id never used), sends nothing.
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await replay(stub, platform.owner, platform.instance_name(iid), chosen.name)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert gone.value.details() == f"dead letter {chosen.name!r} not found"
    assert await replay(stub, platform.owner, platform.instance_name(iid)) == 2
    await settled(sink, before + 3)
    assert delivered(sink, before) == Counter(ids)
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []


async def test_a_crash_before_the_letter_leaves_dead_loses_nothing_and_sends_once(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, monkeypatch: Any
) -> None:
    iid, retrier, stub, (letter,) = await dead_pack(platform, sink, start_retrier_on, ["crash"])
    before = len(sink.bodies)

    async def crash(seq: int) -> None:
        raise ConnectionError("the retrier died after publishing the replay")

    monkeypatch.setattr(retrier.store, "_delete", crash)
    with pytest.raises(OperationFailed) as failed:
        await replay(stub, platform.owner, platform.instance_name(iid))
    assert failed.value.status.code == 13  # INTERNAL, with a correlation id
    assert "correlation id" in failed.value.status.message
    await settled(sink, before + 1)  # published to EVENTS before the crash: delivered
    assert [
        d.name for d in await dead_letters(stub, platform.owner, platform.instance_name(iid))
    ] == [letter.name]
    monkeypatch.undo()
    # Replayed again (the operator retries): EVENTS drops the copy; the letter leaves DEAD.
    assert await replay(stub, platform.owner, platform.instance_name(iid)) == 1
    await settled(sink, before + 1)
    assert delivered(sink, before) == Counter(["crash"])
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []


async def test_a_replay_that_fails_again_comes_back_as_a_new_letter(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    iid, _, stub, (letter,) = await dead_pack(platform, sink, start_retrier_on, ["again"])
    sink.status = 500  # not fixed yet: the replay fails the same way, at once
    for _ in range(2):
        before = len(sink.bodies)
        assert await replay(stub, platform.owner, platform.instance_name(iid)) == 1
        await settled(sink, before + 1)
        (again,) = await until_letters(stub, platform.owner, platform.instance_name(iid), 1)
        assert again.name != letter.name and again.message_id == "again"
        letter = again
    sink.status = 200
    before = len(sink.bodies)
    assert await replay(stub, platform.owner, platform.instance_name(iid)) == 1
    await settled(sink, before + 1)
    assert sink.bodies[-1]["messageId"] == "again"
    assert await dead_letters(stub, platform.owner, platform.instance_name(iid)) == []


async def test_some_letters_that_cannot_reach_events_leave_their_pack_whole_for_a_retry(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, monkeypatch: Any
) -> None:
    ids = ["keep-0", "keep-1", "keep-2"]
    iid, retrier, stub, letters = await dead_pack(platform, sink, start_retrier_on, ids)
    js = retrier.store._js
    publish = js.publish

    async def events_down(subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject.startswith("events."):
            raise nats.errors.TimeoutError
        return await publish(subject, *args, **kwargs)

    # EVENTS first: the pack's others are stored again only once the chosen letter is sent.
    monkeypatch.setattr(js, "publish", events_down)
    chosen = next(letter for letter in letters if letter.message_id == "keep-1")
    with pytest.raises(OperationFailed):
        await replay(stub, platform.owner, platform.instance_name(iid), chosen.name)
    monkeypatch.undo()
    after = await dead_letters(stub, platform.owner, platform.instance_name(iid))
    assert sorted(letter.name for letter in after) == sorted(letter.name for letter in letters)
    # From an attacker's review: with the others stored before EVENTS and that copy deleted
    # when EVENTS failed, a retry within the stream's 2-minute dedupe window "stored" them
    # against the deleted copy, then deleted the pack: keep-0 and keep-2 were gone.
    assert await replay(stub, platform.owner, platform.instance_name(iid), chosen.name) == 1
    after = await dead_letters(stub, platform.owner, platform.instance_name(iid))
    assert sorted(letter.message_id for letter in after) == ["keep-0", "keep-2"]


async def test_others_deduplicated_against_a_copy_since_gone_are_stored_anew(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, monkeypatch: Any
) -> None:
    ids = ["copy-0", "copy-1", "copy-2"]
    iid, retrier, stub, letters = await dead_pack(platform, sink, start_retrier_on, ids)
    name = platform.instance_name(iid)
    chosen = next(letter for letter in letters if letter.message_id == "copy-1")

    async def purge(*names: str) -> int:
        request = pb.PurgeDeadLettersRequest(parent=name, names=list(names))
        return (await stub.PurgeDeadLetters(request, metadata=auth(platform.owner))).purged

    async def crash(seq: int) -> None:
        raise ConnectionError("the retrier died once the pack's others were stored again")

    monkeypatch.setattr(retrier.store, "_delete", crash)
    with pytest.raises(grpc.aio.AioRpcError):
        await purge(chosen.name)
    monkeypatch.undo()
    listed = await dead_letters(stub, platform.owner, name)
    (copy_seq,) = {seq_of(letter) for letter in listed} - {seq_of(chosen)}
    assert await purge(f"{name}/deadLetters/{public_id(str(copy_seq))}") == 2
    # The same letter purged again within the dedupe window: its others' copy id is the same
    # as the one just purged; they are stored anew, not taken as stored.
    assert await purge(chosen.name) == 1
    after = await dead_letters(stub, platform.owner, name)
    assert sorted(letter.message_id for letter in after) == ["copy-0", "copy-2"]
