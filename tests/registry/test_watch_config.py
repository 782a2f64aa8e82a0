"""WatchConfig: the data plane's snapshot, then each change with a higher revision."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import HANDLER, SERVICE, SETTINGS, Registry, auth


async def next_message(stream: grpc.aio.UnaryStreamCall) -> pb.WatchConfigResponse:
    return await asyncio.wait_for(stream.read(), timeout=20)  # type: ignore[return-value]


async def test_snapshot_then_changes(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Watch Co")
    src = (
        await registry.stub.CreateSource(pb.CreateSourceRequest(name="web"), metadata=auth(owner))
    ).source
    fn = (
        await registry.stub.CreateFunction(
            pb.CreateFunctionRequest(name="Hook", code=HANDLER, settings=SETTINGS),
            metadata=auth(owner),
        )
    ).function
    values = struct_pb2.Struct()
    values.update({"endpoint": "http://127.0.0.1:1/", "apiKey": "decrypted-for-the-data-plane"})
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(function_id=fn.id, source_id=src.id, settings=values),
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

    rotated = (
        await registry.stub.RotateWriteKey(
            pb.RotateWriteKeyRequest(source_id=src.id), metadata=auth(owner)
        )
    ).source
    change = await next_message(stream)
    assert not change.reset and change.revision > snap.revision
    assert [s.write_key for s in change.sources] == [rotated.write_key] and not change.instances

    await registry.stub.DeleteInstance(
        pb.DeleteInstanceRequest(instance_id=ins.id), metadata=auth(owner)
    )
    removed = await next_message(stream)
    assert list(removed.removed_instance_ids) == [ins.id] and removed.revision > change.revision
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
