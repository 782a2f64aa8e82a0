"""WatchConfig: the data plane's snapshot, then each change with a higher revision."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.config_watch import ConfigView, ConfigWatcher, apply_message
from services.common.settings import sqlalchemy_url
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


async def _instance(
    registry: Registry, owner: str, ws_id: str, fn: str, src: str, label: str
) -> res.Instance:
    values = struct_pb2.Struct()
    values.update({"endpoint": f"http://127.0.0.1:1/{label}", "apiKey": f"secret-{label}"})
    created = await registry.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=ws(ws_id),
            instance=res.Instance(
                function=fn, source=src, settings=values, display_name=f"ins {label}"
            ),
        ),
        metadata=auth(owner),
    )
    return created.instance


async def _watched_co(
    registry: Registry, name: str, code: str = HANDLER
) -> tuple[str, str, str, str]:
    """A workspace with one source and one function: (workspace id, owner, source, function)."""
    ws_id, owner = await registry.workspace(name)
    src = await registry.stub.CreateSource(
        pb.CreateSourceRequest(parent=ws(ws_id), source=res.Source(display_name="web")),
        metadata=auth(owner),
    )
    fn = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=ws(ws_id),
            function=res.DestinationFunction(display_name="Hook"),
            code=code,
            settings=SETTINGS,
        ),
        metadata=auth(owner),
    )
    return ws_id, owner, src.source.name, fn.function.name


async def test_a_change_sends_only_what_it_touched(registry: Registry) -> None:
    ws_id, owner, src, fn = await _watched_co(registry, "Delta Co")
    made = [await _instance(registry, owner, ws_id, fn, src, str(i)) for i in range(5)]
    stream = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="t"), metadata=auth(SERVICE))
    snap = await next_message(stream)
    assert len(snap.instances) == 5

    target = made[2]
    wait = duration_pb2.Duration()
    wait.FromTimedelta(timedelta(milliseconds=400))
    await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(name=target.name, batch_wait=wait),
            update_mask=field_mask_pb2.FieldMask(paths=["batch_wait"]),
        ),
        metadata=auth(owner),
    )
    change = await next_message(stream)
    (cfg,) = change.instances
    assert cfg.id == target.name.rsplit("/", 1)[-1] and cfg.settings["apiKey"] == "secret-2"
    assert cfg.batch_wait.ToTimedelta() == timedelta(milliseconds=400)
    assert not change.sources and not change.removed_instance_ids

    # Renaming the function changes every instance's integrations key: all five are sent.
    await registry.stub.UpdateFunction(
        pb.UpdateFunctionRequest(
            function=res.DestinationFunction(name=fn, display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth(owner),
    )
    renamed = await next_message(stream)
    assert {c.integration_key for c in renamed.instances} == {"Renamed (Delta Co)"}
    assert len(renamed.instances) == 5
    stream.cancel()


async def _follow(stream: grpc.aio.UnaryStreamCall, revision: int) -> ConfigView:
    """Apply stream messages until the view reaches `revision`."""
    view = ConfigView()
    while view.revision < revision:
        view = apply_message(view, await next_message(stream))
    return view


def _same(a: ConfigView, b: ConfigView) -> None:
    assert a.revision == b.revision
    assert dict(a.sources) == dict(b.sources)
    assert dict(a.instances) == dict(b.instances)
    assert dict(a.instances_by_source) == dict(b.instances_by_source)
    assert dict(a.sources_by_write_key) == dict(b.sources_by_write_key)


async def test_a_follower_ends_where_a_fresh_snapshot_starts(registry: Registry) -> None:
    """Changes from several writers at once, followed as deltas, equal a snapshot afterwards;
    a watcher that connects after the log was pruned still gets the whole state."""
    ws_id, owner, src, fn = await _watched_co(registry, "Converge Co")
    early = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="a"), metadata=auth(SERVICE))
    first = await next_message(early)

    async def writer(label: str) -> None:
        ins = await _instance(registry, owner, ws_id, fn, src, label)
        await registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(name=ins.name, state=res.Instance.STATE_DISABLED),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=auth(owner),
        )
        if label.endswith("0"):
            await registry.stub.DeleteInstance(
                pb.DeleteInstanceRequest(name=ins.name), metadata=auth(owner)
            )

    await asyncio.gather(*(writer(f"w{i}") for i in range(12)))
    rotated = await registry.stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(name=src), metadata=auth(owner)
    )
    engine = create_async_engine(sqlalchemy_url(registry.database_url))
    async with engine.begin() as conn:
        head = (await conn.execute(text("SELECT revision FROM config_state"))).scalar_one()
        logged = (
            await conn.execute(
                text("SELECT count(DISTINCT revision) FROM config_change WHERE revision > :r"),
                {"r": first.revision},
            )
        ).scalar_one()
    assert logged == head - first.revision  # every revision logged, none torn

    followed = await _follow(early, head)
    late = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="b"), metadata=auth(SERVICE))
    _same(followed, await _follow(late, head))
    assert set(followed.sources_by_write_key) == {rotated.source.write_key}
    assert len(followed.instances) == 10  # w0 and w10 were deleted
    assert not any(i.enabled for i in followed.instances.values())

    # The log pruned under a live registry: the next change cannot be told as a delta, so
    # the registry re-reads everything and its watchers still converge.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM config_change"))
    await engine.dispose()
    await _instance(registry, owner, ws_id, fn, src, "after-prune")
    after = await next_message(early)
    view = apply_message(followed, after)
    assert any(c.settings["apiKey"] == "secret-after-prune" for c in view.instances.values())
    fresh = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="c"), metadata=auth(SERVICE))
    _same(view, await _follow(fresh, view.revision))
    for stream in (early, late, fresh):
        stream.cancel()


async def test_a_configuration_over_4_mib_arrives_in_parts(registry: Registry) -> None:
    """gRPC clients refuse messages over 4 MiB by default: a big snapshot comes in parts."""
    ws_id, owner, src, fn = await _watched_co(registry, "Big Co", HANDLER + "\n// " + "x" * 400_000)
    for i in range(12):
        await _instance(registry, owner, ws_id, fn, src, str(i))

    stream = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="t"), metadata=auth(SERVICE))
    received = [await next_message(stream)]
    while received[-1].more:
        received.append(await next_message(stream))
    stream.cancel()
    assert len(received) >= 5 and all(m.ByteSize() < 1_100_000 for m in received)
    assert received[0].reset and not any(m.reset for m in received[1:])

    watcher = ConfigWatcher(f"127.0.0.1:{registry.port}", SERVICE, "big")
    watcher.start()
    try:
        view = await asyncio.wait_for(watcher.wait_until(lambda v: len(v.instances) == 12), 20)
    finally:
        await watcher.close()
    assert view.revision == received[0].revision
    assert {c.settings["apiKey"] for c in view.instances.values()} == {
        f"secret-{i}" for i in range(12)
    }


async def test_propagate_trace_is_off_until_set_and_reaches_the_data_plane(
    registry: Registry,
) -> None:
    ws_id, owner, src, fn = await _watched_co(registry, "Trace Co")
    plain = await _instance(registry, owner, ws_id, fn, src, "plain")
    values = struct_pb2.Struct()
    values.update({"endpoint": "http://127.0.0.1:1/", "apiKey": "k"})
    traced = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=ws(ws_id),
                instance=res.Instance(
                    function=fn,
                    source=src,
                    settings=values,
                    display_name="traced",
                    propagate_trace=True,
                ),
            ),
            metadata=auth(owner),
        )
    ).instance
    assert traced.propagate_trace and not plain.propagate_trace
    got = await registry.stub.GetInstance(
        pb.GetInstanceRequest(name=traced.name), metadata=auth(owner)
    )
    assert got.instance.propagate_trace
    listed = await registry.stub.ListInstances(
        pb.ListInstancesRequest(parent=ws(ws_id)), metadata=auth(owner)
    )
    assert {i.display_name: i.propagate_trace for i in listed.instances} == {
        "ins plain": False,
        "traced": True,
    }

    stream = registry.stub.WatchConfig(pb.WatchConfigRequest(watcher="t"), metadata=auth(SERVICE))
    snap = await next_message(stream)
    by_id = {c.id: c.propagate_trace for c in snap.instances}
    assert by_id == {plain.name.rsplit("/", 1)[-1]: False, traced.name.rsplit("/", 1)[-1]: True}

    async def set_option(name: str, on: bool, paths: list[str]) -> res.Instance:
        updated = await registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(name=name, display_name=f"{name} 2", propagate_trace=on),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=auth(owner),
        )
        return updated.instance

    # Outside the mask the field is ignored; in it, it is set (and sent to the data plane).
    assert not (await set_option(plain.name, True, ["display_name"])).propagate_trace
    await next_message(stream)
    assert (await set_option(plain.name, True, ["propagate_trace"])).propagate_trace
    (on,) = (await next_message(stream)).instances
    assert on.id == plain.name.rsplit("/", 1)[-1] and on.propagate_trace
    assert not (await set_option(traced.name, False, ["propagate_trace"])).propagate_trace
    (off,) = (await next_message(stream)).instances
    assert off.id == traced.name.rsplit("/", 1)[-1] and not off.propagate_trace
    stream.cancel()
