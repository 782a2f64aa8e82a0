"""A setting value shaped like an encrypted one must not stop anyone's configuration.

The registry stores an encrypted value as `{"$sealed": "..."}` and took any stored object with
that key for one. A tenant gave a plain text-map setting the value `{"$sealed": "v1:AAAA…"}`:
accepted, then every WatchConfig failed INTERNAL decrypting it, so no tenant's change (a
rotated write key, a new source) reached a router, executor or retrier, and a data-plane
process started meanwhile never got its first snapshot. Now such a value is refused, and an
instance whose stored settings cannot be decrypted (a database edited by hand, a lost key)
is left out of the configuration alone.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common.config_watch import ConfigWatcher
from services.registry.secrets import MASK
from tests.registry.conftest import (
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    make_source,
    registry,
    store_setting_by_hand,
)
from tests.registry.test_flows import expect, new_function, new_instance, settings, violations
from tests.registry.test_key_rotation import rotate

__all__ = ["registry"]

LOOKALIKE = {"$sealed": "v1:" + "A" * 32}
HEADERS = types_pb2.SettingDefinition(
    label="Headers", name="headers", type=types_pb2.SETTING_TYPE_TEXT_MAP
)


async def _function_and_source(r: Registry, owner: str, ws_id: str) -> tuple[str, str]:
    parent = f"workspaces/{ws_id}"
    fn = await r.stub.CreateFunction(
        new_function(parent, "Lookalike", settings=[*SETTINGS, HEADERS]), metadata=auth(owner)
    )
    src = await make_source(r, owner, "web")
    return fn.function.name, src.name


async def _tenant_instance(r: Registry, workspace: str) -> tuple[str, str]:
    """Create a workspace with one instance; return the instance's name and owner token."""
    ws_id, owner = await r.workspace(workspace)
    fn, src = await _function_and_source(r, owner, ws_id)
    made = await r.stub.CreateInstance(
        new_instance(
            f"workspaces/{ws_id}", fn, src, settings=settings(endpoint="https://x", apiKey="k")
        ),
        metadata=auth(owner),
    )
    return made.instance.name, owner


async def _break(r: Registry, instance_id: str) -> None:
    """Store what no API call can any more: an encrypted value that does not decrypt."""
    await store_setting_by_hand(r.database_url, instance_id, "apiKey", LOOKALIKE)


async def test_a_value_shaped_like_an_encrypted_one_is_refused(registry: Registry) -> None:
    r = registry
    ws_id, owner = await r.workspace("Mallory")
    fn, src = await _function_and_source(r, owner, ws_id)
    parent = f"workspaces/{ws_id}"
    values = {"endpoint": "https://x", "apiKey": "k"}

    refused = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        r.stub.CreateInstance(
            new_instance(parent, fn, src, settings=settings(**values, headers=LOOKALIKE)),
            metadata=auth(owner),
        ),
    )
    assert [field for field, _ in violations(refused)] == ["settings.headers"]
    assert "$sealed" in violations(refused)[0][1]
    listed = await r.stub.ListInstances(
        pb.ListInstancesRequest(parent=parent), metadata=auth(owner)
    )
    assert not listed.instances  # nothing stored

    made = await r.stub.CreateInstance(
        new_instance(parent, fn, src, settings=settings(**values, headers={"X-Team": "a"})),
        metadata=auth(owner),
    )
    for headers in (LOOKALIKE, {"X-Team": "a", "$sealed": "v2:k:AAAA"}):
        refused = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            r.stub.UpdateInstance(
                pb.UpdateInstanceRequest(
                    instance=res.Instance(
                        name=made.instance.name,
                        settings=settings(endpoint="https://x", headers=headers),
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
                ),
                metadata=auth(owner),
            ),
        )
        assert [field for field, _ in violations(refused)] == ["settings.headers"]
    got = await r.stub.GetInstance(
        pb.GetInstanceRequest(name=made.instance.name), metadata=auth(owner)
    )
    assert dict(got.instance.settings["headers"]) == {"X-Team": "a"}


async def test_an_instance_whose_settings_cannot_be_decrypted_stops_no_one_else(
    registry: Registry,
) -> None:
    r = registry
    broken, _ = await _tenant_instance(r, "Broken")
    broken_id = broken.rsplit("/", 1)[-1]
    await _break(r, broken_id)
    kept_id = (await _tenant_instance(r, "Neighbour"))[0].rsplit("/", 1)[-1]

    watcher = ConfigWatcher(f"127.0.0.1:{r.port}", SERVICE, "lookalike")
    watcher.start()
    try:
        view = await asyncio.wait_for(watcher.wait_until(lambda v: kept_id in v.instances), 30)
        assert broken_id not in view.instances
        _, other = await r.workspace("Later")
        added = await make_source(r, other, "later")  # a change after it still arrives
        await asyncio.wait_for(
            watcher.wait_until(lambda v: added.write_key in v.sources_by_write_key), 30
        )
    finally:
        await watcher.close()


async def test_an_instance_whose_secret_cannot_be_decrypted_can_be_repaired(
    registry: Registry,
) -> None:
    """Its owner could change nothing of it (every update read all its values: INTERNAL), and
    a key rotation failed INTERNAL, leaving every tenant's values under the old keys. A
    rotation now names it; any change keeps the value as it is, one giving the value again
    repairs it."""
    r = registry
    name, owner = await _tenant_instance(r, "Broken")
    broken_id = name.rsplit("/", 1)[-1]
    await _break(r, broken_id)
    refused = await expect(grpc.StatusCode.FAILED_PRECONDITION, rotate(r))
    assert broken_id in (refused.details() or "") and "apiKey" in (refused.details() or "")

    async def update(instance: res.Instance, *paths: str) -> res.Instance:
        done = await r.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=instance, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            metadata=auth(owner),
        )
        return done.instance

    renamed = await update(res.Instance(name=name, display_name="renamed"), "display_name")
    assert renamed.display_name == "renamed"
    kept = await update(
        res.Instance(name=name, settings=settings(endpoint="https://z", apiKey=MASK)), "settings"
    )
    assert kept.settings["endpoint"] == "https://z"
    await expect(grpc.StatusCode.FAILED_PRECONDITION, rotate(r))  # still as it was
    await update(
        res.Instance(name=name, settings=settings(endpoint="https://z", apiKey="new")), "settings"
    )
    assert (await rotate(r)).resealed_setting_count >= 1
    watcher = ConfigWatcher(f"127.0.0.1:{r.port}", SERVICE, "repaired")
    watcher.start()
    try:
        view = await asyncio.wait_for(watcher.wait_until(lambda v: broken_id in v.instances), 30)
        assert view.instances[broken_id].settings["apiKey"] == "new"
    finally:
        await watcher.close()
