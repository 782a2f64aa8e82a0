"""A deploy reaches the data plane without a restart: new packs run the new version."""

from __future__ import annotations

import time

from eventfn_api.registry.v1 import registry_pb2 as pb
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import auth


async def test_deploy_takes_effect_within_a_second(platform: Platform, sink: Sink) -> None:
    iid = await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(5))
    await sink.wait_for(5)
    stub, owner = platform.registry.stub, auth(platform.owner)
    ins = (
        await stub.GetInstance(
            pb.GetInstanceRequest(name=platform.instance_name(iid)), metadata=owner
        )
    ).instance
    fn = await stub.GetFunction(pb.GetFunctionRequest(name=ins.function), metadata=owner)
    v2 = SINGLE.replace("'/single'", "'/v2'")
    started = time.monotonic()
    saved = await stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=ins.function,
            code=v2,
            settings=fn.latest_version.settings,
            deploy_instances=[ins.name],
        ),
        metadata=owner,
    )
    await platform.executor.watcher.wait_until(
        lambda v: (
            iid in v.instances
            and v.instances[iid].version_id == saved.version.name.rsplit("/", 1)[-1]
        )
    )
    assert time.monotonic() - started < 1.0, "the executor saw the deploy too late"
    await send(platform, batch_body(5, 100))
    events = await sink.wait_for(10)
    assert len(events) == 10
    assert len(sink.paths) == 10 and sink.paths[-5:] == ["/v2"] * 5
