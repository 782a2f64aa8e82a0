"""Dead letters replayed on a chosen version run that version; the instance keeps its own."""

from __future__ import annotations

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from tests.pipeline.conftest import Platform, Sink
from tests.registry.conftest import auth
from tests.retrier.conftest import StartRetrier
from tests.retrier.test_end_to_end import send, until_dead

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
