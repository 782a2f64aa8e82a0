"""What one version's code costs the data plane however many instances run it. Each instance's
configuration carried its version's code: the code quota counted a version once, but the
registry's live copy and every router, executor and retrier held it once an instance (one
5 MB version on 1,000 instances: 5 GB in each), and a rename of the function sent it all again
(1 MB on 100 instances: 105 MB a watcher, for one change). A watcher asking for
`code_by_version` gets a version's code once a message and holds it once; the registry reads
it once a version. The versions a workspace's instances run, each once, take at most
`EVENTFN_REGISTRY_DEPLOYED_CODE_BYTES_PER_WORKSPACE` of code together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.config_watch import ConfigWatcher
from tests.registry.conftest import (
    HANDLER,
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    registry,
    running_registry,
)
from tests.registry.test_flows import expect
from tests.registry.test_watch_config import _instance, _watched_co, next_message

__all__ = ["registry"]
CODE = HANDLER + "\n// " + "x" * 1_000_000
INSTANCES = 12


async def _message(stream) -> list[pb.WatchConfigResponse]:
    """Read one message of the stream, all its parts."""
    received = [await next_message(stream)]
    while received[-1].more:
        received.append(await next_message(stream))
    return received


async def test_a_versions_code_is_sent_and_held_once_however_many_run_it(
    registry: Registry,
) -> None:
    ws_id, owner, src, fn = await _watched_co(registry, "Fan Out", CODE)
    for i in range(INSTANCES):
        await _instance(registry, owner, ws_id, fn, src, str(i))

    stream = registry.stub.WatchConfig(
        pb.WatchConfigRequest(watcher="t", code_by_version=True), metadata=auth(SERVICE)
    )
    snapshot = await _message(stream)
    assert len(CODE) < sum(m.ByteSize() for m in snapshot) < 1.2 * len(CODE)
    assert [v.code for m in snapshot for v in m.versions] == [CODE]
    assert all(not i.code for m in snapshot for i in m.instances)

    watcher = ConfigWatcher(f"127.0.0.1:{registry.port}", SERVICE, "fan-out")
    watcher.start()
    try:
        await asyncio.wait_for(
            watcher.wait_until(lambda v: len(v.instances) == INSTANCES), timeout=20
        )
        # A rename touches every instance of the function: the code once more, not 12 times.
        renamed = await registry.stub.UpdateFunction(
            pb.UpdateFunctionRequest(
                function=res.DestinationFunction(name=fn, display_name="Renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=auth(owner),
        )
        assert renamed.function.display_name == "Renamed"
        change = await _message(stream)
        assert sum(len(m.instances) for m in change) == INSTANCES
        # The watcher holds the code already: not sent again (13 versions of 5 MB were).
        assert not any(m.versions for m in change)
        assert sum(m.ByteSize() for m in change) < 50_000
        view = await asyncio.wait_for(
            watcher.wait_until(
                lambda v: {i.function_name for i in v.instances.values()} == {"Renamed"}
            ),
            timeout=20,
        )
        assert {view.code_of(i) for i in view.instances.values()} == {CODE}
        assert list(view.code.values()) == [CODE] and all(
            not i.code for i in view.instances.values()
        )
        # The last instance of a version gone, its code goes too.
        listed = await registry.stub.ListInstances(
            pb.ListInstancesRequest(parent=f"workspaces/{ws_id}"), metadata=auth(owner)
        )
        for instance in listed.instances:
            await registry.stub.DeleteInstance(
                pb.DeleteInstanceRequest(name=instance.name), metadata=auth(owner)
            )
        view = await asyncio.wait_for(watcher.wait_until(lambda v: not v.instances), timeout=20)
        assert not view.code and not view.runs
        # Run again, the version's code is sent again: the watcher let it go.
        await _instance(registry, owner, ws_id, fn, src, "again")
        view = await asyncio.wait_for(watcher.wait_until(lambda v: bool(v.instances)), timeout=20)
        assert {view.code_of(i) for i in view.instances.values()} == {CODE}
        latest = []
        while not latest or latest[-1].revision < view.revision:
            latest += await _message(stream)
        assert [v.code for m in latest for v in m.versions] == [CODE]
    finally:
        stream.cancel()
        await watcher.close()


async def function(registry: Registry, owner: str, ws_id: str, name: str, code: str) -> str:
    """Create a function of this code; return its name."""
    made = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=f"workspaces/{ws_id}",
            function=res.DestinationFunction(display_name=name),
            code=code,
            settings=SETTINGS,
        ),
        metadata=auth(owner),
    )
    return made.function.name


async def test_the_code_a_workspaces_instances_run_has_its_quota(
    fresh_database: str, tmp_path: Path
) -> None:
    # Each version counted once however many instances run it: two versions of 1 MB fit 2.5.
    async with running_registry(
        fresh_database, tmp_path, registry_deployed_code_bytes_per_workspace=2_500_000
    ) as registry:
        ws_id, owner, src, fn = await _watched_co(registry, "Runs Much", CODE)
        for i in range(3):
            await _instance(registry, owner, ws_id, fn, src, str(i))
        other = await function(registry, owner, ws_id, "Other", CODE.replace("x", "y"))
        await _instance(registry, owner, ws_id, other, src, "other")
        third = await function(registry, owner, ws_id, "Third", CODE.replace("x", "z"))
        refused = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            _instance(registry, owner, ws_id, third, src, "third"),
        )
        assert "EVENTFN_REGISTRY_DEPLOYED_CODE_BYTES_PER_WORKSPACE" in (refused.details() or "")
        # Saved, a new version is stored; deployed beside the one the others run, refused.
        listed = await registry.stub.ListInstances(
            pb.ListInstancesRequest(parent=f"workspaces/{ws_id}"), metadata=auth(owner)
        )
        first = next(i for i in listed.instances if i.function == fn)
        saved = await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(name=fn, code=CODE.replace("x", "w"), settings=SETTINGS),
            metadata=auth(owner),
        )
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            registry.stub.DeployInstance(
                pb.DeployInstanceRequest(name=first.name, version=saved.version.name),
                metadata=auth(owner),
            ),
        )
        after = await registry.stub.GetInstance(
            pb.GetInstanceRequest(name=first.name), metadata=auth(owner)
        )
        assert after.instance.version == first.version
        # A version in place of another takes no more: a hotfix goes through near the quota,
        # to every instance of the function at once, or to each in turn.
        ours = [i.name for i in listed.instances if i.function == fn]
        fixed = await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn, code=CODE.replace("x", "v"), settings=SETTINGS, deploy_instances=ours
            ),
            metadata=auth(owner),
        )
        assert len(fixed.deployed_instances) == 3
        hotfix = await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(name=other, code=CODE.replace("x", "u"), settings=SETTINGS),
            metadata=auth(owner),
        )
        (mover,) = [i.name for i in listed.instances if i.function == other]
        await registry.stub.DeployInstance(
            pb.DeployInstanceRequest(name=mover, version=hotfix.version.name),
            metadata=auth(owner),
        )


async def test_deploys_of_a_workspace_wait_for_each_other(registry: Registry) -> None:
    """A Save & Deploy of two instances and a deploy of one of them, at once: the first held
    an instance and waited for the quota's lock, the second the reverse (PostgreSQL found the
    deadlock after a second and one failed with INTERNAL)."""
    ws_id, owner, src, fn = await _watched_co(registry, "Deploys", HANDLER)
    ours = [(await _instance(registry, owner, ws_id, fn, src, str(i))).name for i in range(2)]
    first = await registry.stub.GetInstance(
        pb.GetInstanceRequest(name=ours[0]), metadata=auth(owner)
    )

    async def save_and_deploy(i: int) -> None:
        await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn, code=f"{HANDLER}//{i}", settings=SETTINGS, deploy_instances=ours
            ),
            metadata=auth(owner),
        )

    async def deploy_one(lag: float) -> None:
        await asyncio.sleep(lag)  # a race: each start a little later, to meet the other
        await registry.stub.DeployInstance(
            pb.DeployInstanceRequest(name=ours[-1], version=first.instance.version),
            metadata=auth(owner),
        )

    for i in range(30):
        await asyncio.gather(save_and_deploy(i), deploy_one((i % 10) / 1000))
