"""WatchConfig: the data plane's snapshot, then each change with a higher revision."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2, struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import HANDLER, SERVICE, SETTINGS, Registry, auth, ws


async def next_message(stream: grpc.aio.UnaryStreamCall) -> pb.WatchConfigResponse:
    return await asyncio.wait_for(stream.read(), timeout=20)  # type: ignore[return-value]


async def test_snapshot_then_changes(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Watch Co")
    src = (
        await registry.stub.CreateSource(
            pb.CreateSourceRequest(parent=ws(ws_id), source=res.Source(display_name="web")),
            metadata=auth(owner),
        )
    ).source
    fn = (
        await registry.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=ws(ws_id),
                function=res.DestinationFunction(display_name="Hook"),
                code=HANDLER,
                settings=SETTINGS,
            ),
            metadata=auth(owner),
        )
    ).function
    values = struct_pb2.Struct()
    values.update({"endpoint": "http://127.0.0.1:1/", "apiKey": "decrypted-for-the-data-plane"})
    wait = duration_pb2.Duration()
    wait.FromTimedelta(timedelta(milliseconds=250))
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=ws(ws_id),
                instance=res.Instance(
                    function=fn.name, source=src.name, settings=values, batch_wait=wait
                ),
            ),
            metadata=auth(owner),
        )
    ).instance

    stream = registry.stub.WatchConfig(
        pb.WatchConfigRequest(watcher="test"), metadata=auth(SERVICE)
    )
    snap = await next_message(stream)
    assert snap.reset and snap.revision > 0
    assert [s.write_key for s in snap.sources] == [src.write_key]
    (cfg,) = snap.instances
    assert cfg.integration_key == "Hook (Watch Co)" and cfg.code == HANDLER
    assert cfg.settings["apiKey"] == "decrypted-for-the-data-plane"
    assert list(cfg.secret_setting_names) == ["apiKey"]
    assert cfg.workspace_id == ws_id and cfg.batch_size == 20
    assert cfg.batch_wait.ToTimedelta() == timedelta(milliseconds=250)
    assert cfg.timeout.ToTimedelta() == timedelta(seconds=5)
    assert not cfg.HasField("retry_window") and cfg.id == ins.name.rsplit("/", 1)[-1]

    rotated = (
        await registry.stub.RotateWriteKey(
            pb.RotateWriteKeyRequest(name=src.name), metadata=auth(owner)
        )
    ).source
    change = await next_message(stream)
    assert not change.reset and change.revision > snap.revision
    assert [s.write_key for s in change.sources] == [rotated.write_key] and not change.instances

    await registry.stub.DeleteInstance(
        pb.DeleteInstanceRequest(name=ins.name), metadata=auth(owner)
    )
    removed = await next_message(stream)
    assert list(removed.removed_instance_ids) == [cfg.id] and removed.revision > change.revision
    stream.cancel()


async def test_only_the_service_token_may_watch(registry: Registry) -> None:
    _, owner = await registry.workspace("Nope")
    stream = registry.stub.WatchConfig(pb.WatchConfigRequest(), metadata=auth(owner))
    try:
        await next_message(stream)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    else:
        raise AssertionError("a member token must not watch the configuration")
