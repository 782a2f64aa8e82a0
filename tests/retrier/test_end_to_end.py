"""Retries end to end: router → executor → RETRY → retrier → EVENTS → executor, and DEAD."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.cli.dead_commands import dead
from services.common import streams
from services.retrier.dead_letters import DeadLetterStore
from services.retrier.scheduler import DEAD_REASON, HISTORY, parse_time
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_parity_batching import all_packs_settled
from tests.registry.conftest import SERVICE, auth
from tests.retrier.conftest import RetrierClient, StartRetrier, lid, seq_of

CODE = """
async function onTrack(event, settings) {
  console.log('sending', event.messageId)
  const res = await fetch(settings.endpoint + '/track', {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(event)
  })
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
"""


def flaky(sink: Sink, failures: int) -> list[int]:
    """Make the sink answer 500 to its first `failures` requests; return the statuses sent."""
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"null")
        async with sink.changed:
            sink.bodies.append(body)
            status = 500 if len(sink.bodies) <= failures else sink.status
            statuses.append(status)
            sink.changed.notify_all()
        return web.json_response({"ok": status < 400}, status=status)

    sink.handle = handle  # type: ignore[method-assign]
    return statuses


async def send(platform: Platform, message_id: str) -> None:
    body = {"type": "track", "userId": "u1", "event": "Retried", "messageId": message_id}
    resp = await platform.http.post("/v1/track", json=body, auth=(platform.write_key, ""))
    assert resp.status_code == 200, resp.text


async def requests(sink: Sink, count: int, seconds: float = 60) -> list[dict[str, Any]]:
    """Wait until the sink got at least `count` requests (repeats of one event included)."""
    async with asyncio.timeout(seconds), sink.changed:
        await sink.changed.wait_for(lambda: len(sink.bodies) >= count)
    return sink.events()


async def quiet(sink: Sink, count: int, seconds: float = 1.5) -> None:
    """Check no request beyond `count` arrives within `seconds` (no late duplicate)."""
    with pytest.raises(TimeoutError):
        await requests(sink, count + 1, seconds=seconds)


async def until_dead(
    stub: RetrierClient, owner: str, instance: str, seconds: float = 30
) -> list[pb.DeadLetter]:
    """Poll ListDeadLetters until the instance has one."""

    async def listed() -> list[pb.DeadLetter]:
        resp = await stub.ListDeadLetters(
            pb.ListDeadLettersRequest(parent=instance), metadata=auth(owner)
        )
        return list(resp.dead_letters)

    return await eventually(listed, f"a dead letter of {instance}", seconds=seconds)


async def held_in_retry(js: Any, subject: str) -> int:
    """Return how many messages RETRY holds on a subject (settled ones are deleted)."""
    info = await js.stream_info(streams.RETRY_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_fails_n_times_then_delivered_exactly_once(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, _ = await start_retrier_on()
    statuses = flaky(sink, failures=3)
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-flaky")
    events = await requests(sink, 4)
    assert [e["messageId"] for e in events] == ["m-flaky"] * 4
    await quiet(sink, 4)
    assert statuses == [500, 500, 500, 200]
    assert retrier.scheduler.counts["republished"] >= 3
    # Handled retries leave RETRY: the instance's health shows none pending, three retried.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stats = await executor_pb2_grpc.ExecutorStub(channel).GetDeliveryStats(
            executor_pb2.GetDeliveryStatsRequest(
                name=f"{platform.instance_name(iid)}/deliveryStats"
            ),
            metadata=auth(platform.owner),
        )
    assert stats.pending_retries == 0


async def test_always_failing_ends_in_dead_and_replay_delivers(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.1, retry_cap_seconds=0.3, retry_window_seconds=2
    )
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-doomed")
    (letter,) = await until_dead(stub, platform.owner, platform.instance_name(iid))
    attempts = len(sink.bodies)
    assert attempts >= 2
    assert letter.message_id == "m-doomed"
    assert orjson.loads(letter.event_json)["messageId"] == "m-doomed"
    assert "retry window of 0:00:02" in letter.reason
    # The last error leads (a list shows a reason's start): what to fix, before the window.
    assert letter.reason.startswith(f"gave up after {attempts} attempts, last: RetryError"), (
        letter.reason
    )
    assert letter.attempts, "the dead letter records its attempts"
    assert letter.attempts[-1].error.type == "RetryError", letter.attempts[-1]
    assert "HTTP 500" in letter.attempts[-1].error.message, letter.attempts[-1]
    pack = await retrier.store.pack(seq_of(letter))
    assert pack is not None and pack.headers[streams.ATTEMPT] == str(attempts)
    assert letter.attempt_count == attempts
    # The DEAD message's window start is the first attempt's; every attempt after it was made.
    assert pack.first_attempt_time() is not None
    shown = await stub.GetDeadLetter(
        pb.GetDeadLetterRequest(name=letter.name), metadata=auth(platform.owner)
    )
    assert shown.dead_letter.event_json == letter.event_json
    (request,) = shown.dead_letter.last_requests
    assert request.method == "POST" and request.status == 500
    assert "sending m-doomed" in shown.dead_letter.last_logs

    sink.status = 200
    replayed = await stub.replay(
        pb.ReplayDeadLettersRequest(parent=platform.instance_name(iid)),
        metadata=auth(platform.owner),
    )
    assert replayed == 1
    audit = await platform.registry.stub.ListAuditEvents(
        rpb.ListAuditEventsRequest(parent=platform.workspace, resource=platform.instance_name(iid)),
        metadata=auth(platform.owner),
    )
    assert audit.events[0].action == res.AUDIT_ACTION_DEAD_LETTERS_REPLAY
    assert audit.events[0].details["replayed"] == 1
    events = await requests(sink, attempts + 1)
    assert events[-1]["messageId"] == "m-doomed"
    await quiet(sink, attempts + 1)
    # The replayed letter left DEAD: nothing to list, nothing to purge.
    listed = await stub.ListDeadLetters(
        pb.ListDeadLettersRequest(parent=platform.instance_name(iid)),
        metadata=auth(platform.owner),
    )
    assert list(listed.dead_letters) == []
    with pytest.raises(grpc.aio.AioRpcError) as gone:  # replayed: no longer a dead letter
        await stub.PurgeDeadLetters(
            pb.PurgeDeadLettersRequest(parent=platform.instance_name(iid), names=[letter.name]),
            metadata=auth(platform.owner),
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_dead_letter_records_every_attempt(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.1, retry_cap_seconds=0.3, retry_window_seconds=1.5
    )
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-history")
    (letter,) = await until_dead(stub, platform.owner, platform.instance_name(iid))
    assert len(letter.attempts) == len(sink.bodies)


async def test_replay_after_the_instance_was_deleted_is_a_failed_precondition(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.1, retry_cap_seconds=0.2, retry_window_seconds=0.5
    )
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-orphan")
    await until_dead(stub, platform.owner, platform.instance_name(iid))
    await platform.registry.stub.DeleteInstance(  # pyright: ignore[reportGeneralTypeIssues]
        rpb.DeleteInstanceRequest(name=platform.instance_name(iid)), metadata=auth(platform.owner)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(
            pb.ReplayDeadLettersRequest(parent=platform.instance_name(iid)),
            metadata=auth(platform.owner),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "was deleted" in (caught.value.details() or "")
    # Another workspace cannot even learn the dead letters exist.
    _, stranger = await platform.registry.workspace("Elsewhere")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(
            pb.ReplayDeadLettersRequest(parent=platform.instance_name(iid)),
            metadata=auth(stranger),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_instance_deleted_while_retries_pending_is_discarded_with_reason(
    platform: Platform,
    sink: Sink,
    start_retrier_on: StartRetrier,
    nats_client: Any,
) -> None:
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    ws = platform.executor.watcher.instances[iid].workspace_id
    await send(platform, "m-pending")
    await sink.wait_for(1)
    js = nats_client.jetstream()
    await eventually(
        lambda: held_in_retry(js, streams.retry_subject(ws, iid)), "the retry stored in RETRY"
    )
    # The retry is pending in RETRY; now the instance goes away, then the retrier looks.
    await platform.registry.stub.DeleteInstance(  # pyright: ignore[reportGeneralTypeIssues]
        rpb.DeleteInstanceRequest(name=platform.instance_name(iid)), metadata=auth(platform.owner)
    )
    seen = asyncio.Event()

    class Discards(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if iid in text and "discarded: instance deleted" in text:
                seen.set()

    watch = Discards(logging.INFO)
    scheduler_log = logging.getLogger("services.retrier.scheduler")
    scheduler_log.addHandler(watch)
    try:
        retrier, _ = await start_retrier_on()
        await asyncio.wait_for(seen.wait(), 20)
    finally:
        scheduler_log.removeHandler(watch)
    assert retrier.scheduler.counts["discarded"] >= 1
    store = DeadLetterStore(nats_client, js)
    assert [p async for p in store.scan(iid)] == []
    assert len(sink.bodies) == 1


async def test_first_attempt_in_the_future_does_not_stretch_the_window(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, nats_client: Any
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.1, retry_cap_seconds=0.2, retry_window_seconds=1.5
    )
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    ws = platform.executor.watcher.instances[iid].workspace_id
    skewed = datetime.now(UTC) + timedelta(hours=1)
    event = {"type": "track", "userId": "u1", "event": "Skewed", "messageId": "m-skew"}
    await nats_client.jetstream().publish(
        streams.retry_subject(ws, iid),
        orjson.dumps([event]),
        headers={
            streams.MSG_ID: f"skew-{uuid.uuid4().hex}",
            streams.ATTEMPT: "1",
            streams.FIRST_ATTEMPT_AT: skewed.isoformat(),
            HISTORY: "[]",
        },
    )
    # Trusted, the window would end in an hour; clamped, it ends 1.5 s after the retrier saw it.
    (letter,) = await until_dead(stub, platform.owner, platform.instance_name(iid), seconds=30)
    assert letter.message_id == "m-skew"
    pack = await retrier.store.pack(seq_of(letter))
    assert pack is not None
    first = parse_time(pack.headers[streams.FIRST_ATTEMPT_AT])
    assert first < datetime.now(UTC), "the future first-attempt time was carried forward"
    assert DEAD_REASON in pack.headers
    assert len(sink.bodies) >= 1


async def test_cli_lists_shows_and_replays_dead_letters(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.1, retry_cap_seconds=0.2, retry_window_seconds=0.5
    )
    sink.status = 500
    iid = await platform.instance(CODE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-cli")
    (letter,) = await until_dead(stub, platform.owner, platform.instance_name(iid))
    attempts = len(sink.bodies)
    env = {
        "EVENTFN_RETRIER_ADDR": f"127.0.0.1:{retrier.port}",
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{platform.registry.port}",
        "EVENTFN_TOKEN": platform.owner,
    }
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(dead, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    # The CLI's stubs are blocking: run them off the event loop the servers live on.
    listed = await asyncio.to_thread(cli, "list", iid)
    assert lid(letter) in listed and "m-cli" in listed
    shown = await asyncio.to_thread(cli, "show", iid, lid(letter))
    assert "retry window" in shown and "m-cli" in shown
    sink.status = 200
    replayed = await asyncio.to_thread(cli, "replay", iid, "--id", lid(letter))
    assert "replayed 1" in replayed
    events = await requests(sink, attempts + 1)
    assert events[-1]["messageId"] == "m-cli"
    await quiet(sink, attempts + 1)
    assert lid(letter) not in await asyncio.to_thread(cli, "list", iid), "replayed: gone"
    sink.status = 500
    await send(platform, "m-cli-2")
    (second,) = await until_dead(stub, platform.owner, platform.instance_name(iid))
    purged = await asyncio.to_thread(cli, "purge", iid, "--yes")
    assert "purged 1" in purged
    assert lid(second) not in await asyncio.to_thread(cli, "list", iid)


async def test_sigkill_while_holding_retries_loses_nothing(
    platform: Platform,
    sink: Sink,
    start_retrier_on: StartRetrier,
    nats_url: str,
    nats_client: Any,
    tmp_path: Path,
) -> None:
    iid = await platform.instance(CODE, sink.url)
    ws = platform.executor.watcher.instances[iid].workspace_id
    env = {
        **os.environ,
        "EVENTFN_RETRIER_LISTEN": "127.0.0.1:0",
        "EVENTFN_NATS_URL": nats_url,
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{platform.registry.port}",
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_RETRY_BASE_SECONDS": "3",
        "EVENTFN_RETRY_CAP_SECONDS": "3",
    }
    log = tmp_path / "retrier.log"
    with log.open("wb") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.retrier",
            env=env,
            cwd=str(Path(__file__).parents[2]),
            stderr=out,
        )
    try:
        # Publish once the child serves: its retries come due within 3 s of being stored, so
        # a child slower to start than that (a busy machine) would find them all due at once.
        await eventually(
            lambda: "retrier listening" in log.read_text(), "the child retrier serving"
        )
        js = nats_client.jetstream()
        now = datetime.now(UTC).isoformat()
        ids = [f"m-kill-{n}" for n in range(20)]
        for message_id in ids:
            await js.publish(
                streams.retry_subject(ws, iid),
                orjson.dumps([{"type": "track", "userId": "u", "messageId": message_id}]),
                headers={
                    streams.MSG_ID: f"kill-{uuid.uuid4().hex}",
                    streams.ATTEMPT: "1",
                    streams.FIRST_ATTEMPT_AT: now,
                },
            )
        # Wait until the child holds messages (delivered, not acked), then kill it hard.
        await eventually(
            lambda: js.consumer_info(streams.RETRY_STREAM, "retrier"),
            f"the child retrier holding {len(ids) // 2} messages",
            until=lambda info: info.num_ack_pending >= len(ids) // 2,
            ignoring=(NotFoundError,),  # the child has not created its consumer yet
        )
    finally:
        child.kill()
        await child.wait()
    await start_retrier_on(retry_base_seconds=3, retry_cap_seconds=3)
    await sink.wait_for(len(ids), seconds=60)
    # Count once RETRY holds none of them and EVENTS has nothing in flight: a retry the
    # child republished but did not settle is republished again, and deduplicated in EVENTS.
    await eventually(
        lambda: held_in_retry(js, streams.retry_subject(ws, iid)),
        "every retry settled",
        until=lambda held: held == 0,
    )
    await all_packs_settled(nats_client)
    counts = Counter(e["messageId"] for e in sink.events())
    assert counts == dict.fromkeys(ids, 1), counts
