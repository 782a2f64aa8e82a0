"""Dead letters replayed on a chosen version run that version; the instance keeps its own."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.common import streams
from services.retrier.dead_letters import DeadLetterStore
from tests.pipeline.conftest import Platform, Sink
from tests.registry.conftest import auth
from tests.retrier.conftest import StartRetrier, seq_of
from tests.retrier.test_end_to_end import requests, send, until_dead

BROKEN = """
async function onTrack(event, settings) { throw new RetryError('v1 cannot deliver') }
"""
FIXED = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/fixed', {method: 'POST', body: JSON.stringify(event)})
}
"""


async def test_replay_on_a_saved_but_undeployed_version(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.05, retry_cap_seconds=0.1, retry_window_seconds=1
    )
    iid = await platform.instance(BROKEN, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-versioned")
    (letter,) = await until_dead(stub, platform.owner, platform.instance_name(iid))
    registry, owner = platform.registry.stub, auth(platform.owner)
    name = platform.instance_name(iid)
    ins = await registry.GetInstance(rpb.GetInstanceRequest(name=name), metadata=owner)
    fn = await registry.GetFunction(
        rpb.GetFunctionRequest(name=ins.instance.function), metadata=owner
    )
    fixed = await registry.SaveFunction(
        rpb.SaveFunctionRequest(
            name=fn.function.name, code=FIXED, settings=fn.latest_version.settings
        ),
        metadata=owner,
    )
    replayed = await stub.replay(
        pb.ReplayDeadLettersRequest(parent=name, names=[letter.name], version=fixed.version.name),
        metadata=owner,
    )
    assert replayed == 1
    events = await sink.wait_for(1)
    assert events[0]["messageId"] == "m-versioned" and sink.paths == ["/fixed"]
    still = await registry.GetInstance(rpb.GetInstanceRequest(name=name), metadata=owner)
    assert still.instance.version == ins.instance.version, "a replay is not a deploy"


PERMANENT = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/deployed', {method: 'POST', body: JSON.stringify(event)})
  throw new Error('the deployed version fails')
}
"""
RETRYING = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/chosen', {method: 'POST', body: JSON.stringify(event)})
  throw new RetryError('the chosen version: try again')
}
"""


async def test_retries_of_a_pinned_replay_run_its_version_and_its_dead_letter_says_so(
    platform: Platform, sink: Sink, start_retrier_on: StartRetrier, nats_client: NatsClient
) -> None:
    """The executor's RETRY hand-off left out Eventfn-Version: the first retry of a replay
    pinned to a version ran the deployed one. A replay of the letter it became, naming no
    version, runs the deployed one (the pin is not kept)."""
    retrier, stub = await start_retrier_on(
        retry_base_seconds=0.05, retry_cap_seconds=0.1, retry_window_seconds=1
    )
    iid = await platform.instance(PERMANENT, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    await send(platform, "m-pinned")
    name = platform.instance_name(iid)
    (letter,) = await until_dead(stub, platform.owner, name)
    registry, owner = platform.registry.stub, auth(platform.owner)
    ins = await registry.GetInstance(rpb.GetInstanceRequest(name=name), metadata=owner)
    fn = await registry.GetFunction(
        rpb.GetFunctionRequest(name=ins.instance.function), metadata=owner
    )
    chosen = await registry.SaveFunction(
        rpb.SaveFunctionRequest(
            name=fn.function.name, code=RETRYING, settings=fn.latest_version.settings
        ),
        metadata=owner,
    )
    del sink.paths[:]
    await stub.replay(
        pb.ReplayDeadLettersRequest(parent=name, names=[letter.name], version=chosen.version.name),
        metadata=owner,
    )
    # Retried until the window of 1 s passed, then dead again: every attempt on the version.
    (again,) = await until_dead(stub, platform.owner, name)
    assert len(sink.paths) >= 2 and set(sink.paths) == {"/chosen"}, sink.paths
    store = DeadLetterStore(nats_client, nats_client.jetstream())
    pack = await store.pack(seq_of(again))
    assert pack is not None
    assert pack.headers[streams.VERSION] == chosen.version.name.rsplit("/", 1)[-1]
    del sink.paths[:]
    await stub.replay(pb.ReplayDeadLettersRequest(parent=name, names=[again.name]), metadata=owner)
    await requests(sink, 1)
    assert sink.paths == ["/deployed"]
