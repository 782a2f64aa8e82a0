"""A replay of all of an instance's dead letters streams them, counts them in the operation,
and stops at the DEAD stream's last sequence when it started: letters dead-lettered meanwhile
are left, and the run ends. Its record stays fresh while it runs, so no other retrier takes
it over; one an older retrier wrote (no bound) is bounded when taken over."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.common import streams
from services.retrier import operations
from services.retrier.dead_letters import DeadLetterStore
from services.retrier.operations import Operations, ReplayRecord
from tests.eventually import eventually
from tests.registry.conftest import Registry, auth
from tests.retrier.conftest import StartRetrier
from tests.retrier.test_replay_operations import done
from tests.security.test_control_plane_dead_letters import Tenant, bury, tenant


async def left_in_dead(nats_client: NatsClient, t: Tenant) -> list[str]:
    """Return the messageIds of the tenant's letters still in DEAD."""
    store = DeadLetterStore(nats_client, nats_client.jetstream())
    return [letter.message_id for letter in await store.select(t.instance_id, [])]


async def abandoned(nats_client: NatsClient, record: ReplayRecord, *, drop: str = "") -> None:
    """Store a record as a retrier that stopped an hour ago left it (without field `drop`)."""
    record.updated = time.time() - 3600
    stored = {k: v for k, v in asdict(record).items() if k != drop}
    kv = await nats_client.jetstream().key_value(operations.BUCKET)
    await kv.put(record.key(), orjson.dumps(stored))


async def test_letters_dead_lettered_after_a_replay_of_all_started_are_left(
    registry: Registry, start_retrier_on: StartRetrier, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    await streams.ensure_streams(js)
    await Operations(js).open()
    t = await tenant(registry, "Bounded")
    md = auth(t.owner)
    who = await registry.stub.WhoAmI(rpb.WhoAmIRequest(), metadata=md)
    for n in range(3):
        await bury(nats_client, t, f"before-{n}")
    up_to_seq = (await js.stream_info(streams.DEAD_STREAM)).state.last_seq
    for n in range(2):
        await bury(nats_client, t, f"after-{n}")
    # Accepted (bounded) by a retrier that stopped before it replayed or counted anything.
    record = Operations.new_record(
        t.workspace_id, t.instance, who.member.name, "digest", up_to_seq=up_to_seq
    )
    await abandoned(nats_client, record)
    _, stub = await start_retrier_on()  # takes it over
    finished = await done(stub, record.name, md)
    metadata = pb.ReplayDeadLettersMetadata()
    assert finished.metadata.Unpack(metadata)
    assert (metadata.total, metadata.replayed) == (3, 3)
    assert sorted(await left_in_dead(nats_client, t)) == ["after-0", "after-1"]
    # An older retrier's record names no bound and was counted when accepted: the retrier
    # taking it over bounds it at the stream's end then, and keeps the count.
    older = Operations.new_record(t.workspace_id, t.instance, who.member.name, "digest", total=2)
    await abandoned(nats_client, older, drop="up_to_seq")
    await start_retrier_on()
    finished = await done(stub, older.name, md)
    assert finished.metadata.Unpack(metadata)
    assert (metadata.total, metadata.replayed) == (2, 2)
    assert await left_in_dead(nats_client, t) == []


async def _written_record(
    nats_client: NatsClient, monkeypatch: pytest.MonkeyPatch, fresh: timedelta
) -> tuple[Operations, ReplayRecord]:
    """Open the operations bucket with records kept fresh every `fresh`, and write a new
    replay's record."""
    monkeypatch.setattr(operations, "KEEP_FRESH", fresh)
    ops = Operations(nats_client.jetstream())
    await ops.open()
    workspace_id = f"ws_{uuid.uuid4().hex[:20]}"
    record = Operations.new_record(
        workspace_id, f"workspaces/{workspace_id}/instances/ins_x", "actor", "digest"
    )
    await ops.write(record)
    return ops, record


async def test_a_running_replay_keeps_its_record_fresh_while_nothing_is_replayed(
    nats_client: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long scan wrote nothing for more than ABANDONED_AFTER: a retrier starting then took
    the running replay over, and both replayed it."""
    ops, record = await _written_record(nats_client, monkeypatch, timedelta(milliseconds=50))
    accepted = record.updated
    scanning = asyncio.Event()

    async def long_scan(_: ReplayRecord, __: operations.Progress) -> int:
        await scanning.wait()
        return 0

    ops.run(record, long_scan)

    async def updated() -> float:
        stored = await ops.read(record.name)
        assert stored is not None and not stored.done
        return stored.updated

    await eventually(updated, "the running record written again", until=lambda u: u > accepted)
    scanning.set()
    finished = await ops.wait(record.name, 10)
    assert finished is not None and finished.done
    assert datetime.fromisoformat(finished.end_time) <= datetime.now(UTC)
    await ops.close()


async def test_a_replay_ends_though_its_keep_fresh_write_lost_the_cancellation(
    nats_client: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's wait_for, under a NATS write, loses a cancellation that comes as its
    wait ends: the loop keeping the record fresh then ran on, and the replay never wrote its
    end (running for ever: the full suite's keep-fresh test saw it once)."""
    ops, record = await _written_record(nats_client, monkeypatch, timedelta(milliseconds=20))
    writing = asyncio.Event()
    write = Operations.write

    async def write_losing_a_cancellation(self: Operations, kept: ReplayRecord) -> None:
        writing.set()
        try:
            await asyncio.sleep(0.05)  # the write's wait, as wait_for ends it
        except asyncio.CancelledError:
            pass  # lost, as 3.11's wait_for loses it when its wait ends meanwhile
        await write(self, kept)

    monkeypatch.setattr(Operations, "write", write_losing_a_cancellation)

    async def scan_until_a_fresh_write(_: ReplayRecord, __: operations.Progress) -> int:
        writing.clear()
        await writing.wait()  # the record is being kept fresh right now
        return 0

    ops.run(record, scan_until_a_fresh_write)
    finished = await ops.wait(record.name, 5)
    assert finished is not None and finished.done
    await ops.close()
