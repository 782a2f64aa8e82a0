"""A dead-letter flood: a function that throws for every event (or RetryError until its window
ends) made every event a dead letter, and DEAD had no bound per instance: one write key filled,
over the 14 days letters are kept, the disk every tenant's streams share. An instance now keeps
at most EVENTFN_DEAD_MAX_PER_INSTANCE packs of dead letters. Past it, its failed events are
discarded by the executor and the retrier, saying why, while its stored letters stay and a
neighbour's are kept as before; a replay or purge of only some letters of a pack, which stores
the pack's others again, is refused before anything is sent, and whole packs make room.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg

from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.common import streams
from services.devtools.embedded.nats import EmbeddedNats
from services.retrier.app import RunningRetrier, start_retrier
from services.retrier.settings import RetrierSettings
from tests.eventually import eventually
from tests.observability.test_metrics import scrape, total
from tests.pipeline.conftest import Platform, start_platform
from tests.pipeline.test_parity_batching import event, post_batch
from tests.registry.conftest import SERVICE, Registry, auth, registry
from tests.retrier.conftest import OperationFailed, RetrierClient, public_id, seq_of
from tests.security.test_retry_storm import stored

__all__ = ["registry"]

LIMIT = 3
FAILS = "async function onTrack(event) { throw new Error('always') }"
RETRIES = "async function onTrack(event) { throw new RetryError('destination down') }"


@dataclass
class Flood:
    """A data path with a retrier on a NATS server of the test's own (DEAD: LIMIT packs per
    instance), and a client of that server."""

    platform: Platform
    retrier: RunningRetrier
    stub: RetrierClient
    nc: NatsClient

    async def send(self, platform: Platform, count: int, prefix: str) -> None:
        """Send `count` events one request after another: one pack each."""
        for i in range(count):
            await post_batch(platform, [event("track", f"{prefix}-{i}")])

    async def packs(self, platform: Platform, iid: str) -> list[RawStreamMsg]:
        """Return the instance's packs of dead letters once nothing is left to settle."""
        js = self.nc.jetstream()
        retry = streams.retry_subject(platform.workspace_id, iid)

        async def settled() -> bool:
            consumer = await js.consumer_info(streams.EVENTS_STREAM, "executor")
            held = await stored(self.nc, streams.RETRY_STREAM, retry)
            return not (consumer.num_ack_pending or consumer.num_pending or held)

        await eventually(settled, "every pack settled, no retry held", until=bool)
        return await stored(
            self.nc, streams.DEAD_STREAM, streams.dead_subject(platform.workspace_id, iid)
        )


@pytest.fixture
async def flood(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Flood]:
    monkeypatch.setenv("EVENTFN_DEAD_MAX_PER_INSTANCE", str(LIMIT))
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        async with AsyncExitStack() as stack:
            platform = await start_platform(registry, server.url, stack)
            retrier = await start_retrier(
                RetrierSettings(
                    retrier_listen="127.0.0.1:0",
                    nats_url=server.url,
                    registry_addr=f"127.0.0.1:{registry.port}",
                    service_token=SERVICE,
                    retry_base_seconds=0.05,
                    retry_cap_seconds=0.2,
                    retry_window_seconds=1,
                    retrier_metrics_listen="127.0.0.1:0",
                ),
                stack,
            )
            await retrier.watcher.ready.wait()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{retrier.port}")
            stack.push_async_callback(channel.close)
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            yield Flood(platform, retrier, RetrierClient(channel), nc)
    finally:
        server.stop()


def full_warnings(caplog: pytest.LogCaptureFixture, iid: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "EVENTFN_DEAD_MAX_PER_INSTANCE" in r.getMessage()
        and iid in r.getMessage()
    ]


async def test_the_executor_discards_failures_past_the_limit_and_neighbours_keep_theirs(
    flood: Flood, caplog: pytest.LogCaptureFixture
) -> None:
    platform = flood.platform
    iid = await platform.instance(FAILS, "http://127.0.0.1:9/")
    await flood.send(platform, 8, "flood")
    packs = await flood.packs(platform, iid)
    assert len(packs) == LIMIT
    # Each pack ran once and was settled: the refused hand-off did not send it round again.
    consumer = await flood.nc.jetstream().consumer_info(streams.EVENTS_STREAM, "executor")
    assert consumer.num_redelivered == 0
    (warning,) = full_warnings(caplog, iid)  # said once, with the reason, not per pack
    assert "Error: always" in warning
    samples = await scrape(platform.executor.metrics_port)
    assert total(samples, "eventfn_dead_letters_discarded_total") == 8 - LIMIT
    # Another tenant's failures are dead-lettered as before.
    neighbour = await platform.neighbour()
    other = await neighbour.instance(FAILS, "http://127.0.0.1:9/")
    await flood.send(neighbour, 2, "neighbour")
    assert len(await flood.packs(neighbour, other)) == 2


async def test_the_retrier_discards_events_past_their_retries_past_the_limit(
    flood: Flood, caplog: pytest.LogCaptureFixture
) -> None:
    platform = flood.platform
    iid = await platform.instance(RETRIES, "http://127.0.0.1:9/")
    await flood.retrier.watcher.wait_until(lambda view: iid in view.instances)
    await flood.send(platform, 6, "retried")
    await flood.retrier.scheduler.wait_for(
        lambda counts: counts["dead"] + counts["discarded"] >= 6, seconds=60
    )
    assert len(await flood.packs(platform, iid)) == LIMIT
    assert flood.retrier.scheduler.counts["dead"] == LIMIT
    assert flood.retrier.scheduler.counts["discarded"] == 6 - LIMIT
    (warning,) = full_warnings(caplog, iid)
    assert "gave up after" in warning
    samples = await scrape(flood.retrier.metrics_port)
    assert total(samples, "eventfn_dead_letters_discarded_total") == 6 - LIMIT


async def test_taking_some_letters_of_a_pack_at_the_limit_is_refused_and_changes_nothing(
    flood: Flood,
) -> None:
    platform, stub = flood.platform, flood.stub
    sink_down = "http://127.0.0.1:9/"  # refused connections: every event fails
    iid = await platform.instance(FAILS, sink_down)
    name = platform.instance_name(iid)
    await post_batch(platform, [event("track", f"three-{i}") for i in range(3)])
    await flood.send(platform, LIMIT - 1, "single")
    assert len(await flood.packs(platform, iid)) == LIMIT

    async def letters() -> list[pb.DeadLetter]:
        listed = await stub.ListDeadLetters(
            pb.ListDeadLettersRequest(parent=name, page_size=100), metadata=auth(platform.owner)
        )
        return list(listed.dead_letters)

    before = await letters()
    one = next(letter for letter in before if letter.message_id == "three-1")
    with pytest.raises(OperationFailed) as refused:
        await stub.replay(
            pb.ReplayDeadLettersRequest(parent=name, names=[one.name]),
            metadata=auth(platform.owner),
        )
    assert refused.value.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]  # 9
    assert "EVENTFN_DEAD_MAX_PER_INSTANCE" in refused.value.status.message
    with pytest.raises(grpc.aio.AioRpcError) as purge_refused:
        await stub.PurgeDeadLetters(
            pb.PurgeDeadLettersRequest(parent=name, names=[one.name]),
            metadata=auth(platform.owner),
        )
    assert purge_refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(letter.name for letter in await letters()) == sorted(
        letter.name for letter in before
    ), "nothing taken out"
    events = await flood.nc.jetstream().stream_info(streams.EVENTS_STREAM)
    assert events.state.messages == 1 + (LIMIT - 1), "nothing replayed"
    # A whole pack, named by its sequence alone, makes room; then some letters may leave.
    single = next(letter for letter in before if letter.message_id.startswith("single"))
    whole = f"{name}/deadLetters/{public_id(str(seq_of(single)))}"
    purged = await stub.PurgeDeadLetters(
        pb.PurgeDeadLettersRequest(parent=name, names=[whole]), metadata=auth(platform.owner)
    )
    assert purged.purged == 1
    await stub.PurgeDeadLetters(
        pb.PurgeDeadLettersRequest(parent=name, names=[one.name]), metadata=auth(platform.owner)
    )
    left = sorted(letter.message_id for letter in await letters())
    assert left == sorted(
        m
        for m in (letter.message_id for letter in before)
        if m not in ("three-1", single.message_id)
    )
