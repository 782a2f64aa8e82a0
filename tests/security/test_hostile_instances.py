"""Two instances of one function version never share a context: a global set with one
instance's secret never serves the other's events (issue 10, item 6)."""

from __future__ import annotations

from google.protobuf import struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.pipeline.test_delivery import batch_body, send
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]

CACHED_CLIENT = """
let client;
async function onTrack(event, settings) {
  client = client || {key: settings.apiKey};
  await fetch(settings.endpoint + '/' + client.key, {method: 'POST', body: JSON.stringify(event)});
}
"""


async def test_a_global_client_never_carries_one_instances_key_into_another(
    platform: Platform, sink: Sink
) -> None:
    owner = auth(platform.owner)
    stub = platform.registry.stub
    fn = await stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=platform.workspace,
            function=res.DestinationFunction(display_name="cached-client"),
            code=CACHED_CLIENT,
            settings=[
                types_pb2.SettingDefinition(name="endpoint", type=types_pb2.SETTING_TYPE_STRING),
                types_pb2.SettingDefinition(
                    name="apiKey", type=types_pb2.SETTING_TYPE_STRING, encrypted=True
                ),
            ],
        ),
        metadata=owner,
    )
    ids = []
    for key in ("keyA", "keyB"):
        values = struct_pb2.Struct()
        values.update({"endpoint": sink.url, "apiKey": key})
        created = await stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=platform.workspace,
                instance=res.Instance(
                    function=fn.function.name,
                    source=platform.source,
                    display_name=f"instance {key}",
                    settings=values,
                ),
            ),
            metadata=owner,
        )
        ids.append(created.instance.name.rsplit("/", 1)[-1])
    for watcher in (platform.router.watcher, platform.executor.watcher):
        await watcher.wait_until(lambda v: all(i in v.instances for i in ids))

    for start in range(0, 40, 10):
        await send(platform, batch_body(10, start))
    async with sink.changed:
        await sink.changed.wait_for(lambda: len(sink.paths) >= 80)
    assert sorted(set(sink.paths)) == ["/keyA", "/keyB"]
    assert sink.paths.count("/keyA") == sink.paths.count("/keyB") == 40
