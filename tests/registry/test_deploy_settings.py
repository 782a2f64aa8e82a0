"""Deploying a version that adds a required setting: values go with the deploy, atomically
(issue 11, item 4), through DeployInstance and Save & Deploy."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import grpc
from google.protobuf import field_mask_pb2, json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.registry.secrets import MASK
from tests.registry.conftest import HANDLER, SERVICE, SETTINGS, Registry, auth
from tests.registry.test_flows import expect, make_function, new_instance, settings, violations

REGION = types_pb2.SettingDefinition(
    label="Region", name="region", type=types_pb2.SETTING_TYPE_STRING, required=True
)
V2_SETTINGS = [*SETTINGS, REGION]


async def instance(r: Registry, owner: str, fn_id: str, src_id: str, name: str) -> str:
    made = await r.stub.CreateInstance(
        new_instance(
            fn_id.split("/functions/")[0],
            fn_id,
            src_id,
            display_name=name,
            settings=settings(endpoint="https://example.com/hook", apiKey="sk_live_1"),
        ),
        metadata=auth(owner),
    )
    return made.instance.name


async def save_v2(r: Registry, owner: str, fn_id: str) -> str:
    saved = await r.stub.SaveFunction(
        pb.SaveFunctionRequest(name=fn_id, code=HANDLER, settings=V2_SETTINGS),
        metadata=auth(owner),
    )
    return saved.version.name


async def stored(r: Registry, instance_id: str) -> tuple[str, dict, int]:
    """Return the instance row's version, raw stored settings and revision."""
    conn = await asyncpg.connect(r.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT version_id, settings, revision FROM instance WHERE id = $1",
            instance_id.rsplit("/", 1)[-1],
        )
    finally:
        await conn.close()
    assert row is not None
    raw = row["settings"]
    return row["version_id"], raw if isinstance(raw, dict) else json.loads(raw), row["revision"]


async def test_a_new_required_setting_deploys_with_its_value(registry: Registry) -> None:
    _, owner = await registry.workspace("Required")
    fn_id, src_id = await make_function(registry, owner)
    ins_id = await instance(registry, owner, fn_id, src_id, "hook")
    v2 = await save_v2(registry, owner, fn_id)

    refused = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.DeployInstance(
            pb.DeployInstanceRequest(name=ins_id, version=v2), metadata=auth(owner)
        ),
    )
    assert violations(refused) == [("settings.region", "the required setting 'region' is missing")]

    done = await registry.stub.DeployInstance(
        pb.DeployInstanceRequest(name=ins_id, version=v2, settings=settings(region="eu")),
        metadata=auth(owner),
    )
    assert done.instance.version == v2
    assert json_format.MessageToDict(done.instance.settings) == {
        "endpoint": "https://example.com/hook",
        "apiKey": MASK,  # the secret was kept, still sealed
        "region": "eu",
    }
    _, raw, _ = await stored(registry, ins_id)
    assert "sk_live_1" not in str(raw)

    audit = await registry.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=ins_id.split("/instances/")[0], resource=ins_id),
        metadata=auth(owner),
    )
    deploy = next(e for e in audit.events if e.action == res.AUDIT_ACTION_INSTANCE_DEPLOY)
    details = json_format.MessageToDict(deploy.details)
    assert details["settings_changed"] == ["region"] and "eu" not in str(details)


async def test_a_bad_value_changes_nothing(registry: Registry) -> None:
    _, owner = await registry.workspace("Atomic")
    fn_id, src_id = await make_function(registry, owner)
    ins_id = await instance(registry, owner, fn_id, src_id, "hook")
    v2 = await save_v2(registry, owner, fn_id)
    before = await stored(registry, ins_id)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.DeployInstance(
            pb.DeployInstanceRequest(
                name=ins_id,
                version=v2,
                settings=settings(region=3, endpoint=True, unknown="x"),
            ),
            metadata=auth(owner),
        ),
    )
    assert sorted(f for f, _ in violations(err)) == [
        "settings.endpoint",
        "settings.region",
        "settings.unknown",
    ]
    assert await stored(registry, ins_id) == before


async def test_save_and_deploy_takes_values_per_instance(registry: Registry) -> None:
    _, owner = await registry.workspace("SaveDeploy")
    fn_id, src_id = await make_function(registry, owner)
    eu = await instance(registry, owner, fn_id, src_id, "eu")
    us = await instance(registry, owner, fn_id, src_id, "us")

    def save(per_instance: dict[str, dict]) -> pb.SaveFunctionRequest:
        return pb.SaveFunctionRequest(
            name=fn_id,
            code=HANDLER,
            settings=V2_SETTINGS,
            deploy_instances=[eu, us],
            deploy_settings={k: settings(**v) for k, v in per_instance.items()},
        )

    versions_before = await registry.stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(parent=fn_id), metadata=auth(owner)
    )
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.SaveFunction(save({eu: {"region": "eu"}}), metadata=auth(owner)),
    )
    assert violations(err) == [
        (f"deploy_settings[{us}].settings.region", "the required setting 'region' is missing")
    ]
    after = await registry.stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(parent=fn_id), metadata=auth(owner)
    )
    assert len(after.versions) == len(versions_before.versions), "nothing saved"

    saved = await registry.stub.SaveFunction(
        save({eu: {"region": "eu"}, us: {"region": "us", "apiKey": MASK}}), metadata=auth(owner)
    )
    regions = {
        i.name: json_format.MessageToDict(i.settings)["region"] for i in saved.deployed_instances
    }
    assert regions == {eu: "eu", us: "us"}
    assert {i.version for i in saved.deployed_instances} == {saved.version.name}


async def test_deploy_settings_must_name_deployed_instances(registry: Registry) -> None:
    _, owner = await registry.workspace("Stray")
    fn_id, src_id = await make_function(registry, owner)
    ins_id = await instance(registry, owner, fn_id, src_id, "hook")
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn_id,
                code=HANDLER,
                settings=V2_SETTINGS,
                deploy_settings={ins_id: settings(region="eu")},
            ),
            metadata=auth(owner),
        ),
    )
    assert violations(err)[0][0] == "deploy_settings"


async def test_a_secret_a_newer_version_no_longer_marks_encrypted_is_kept_by_its_mask(
    registry: Registry,
) -> None:
    """A version that drops `encrypted` from a setting keeps its stored value sealed (and
    masked in reads). Sending the values back as read, one changed (what `eventfn instances
    update --set endpoint=…` does), stored the mask text itself as the new value: the data
    plane then ran with "••••••••" for the key, and reads, masked, showed nothing wrong."""
    r = registry
    _, owner = await r.workspace("Unmarked")
    fn_id, src_id = await make_function(r, owner)
    ins_id = await instance(r, owner, fn_id, src_id, "hook")
    plain_key = types_pb2.SettingDefinition(
        label="API Key", name="apiKey", type=types_pb2.SETTING_TYPE_STRING, required=True
    )
    saved = await r.stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=fn_id, code=HANDLER, settings=[SETTINGS[0], plain_key], deploy_instances=[ins_id]
        ),
        metadata=auth(owner),
    )
    (shown,) = saved.deployed_instances
    values = json_format.MessageToDict(shown.settings)
    assert values["apiKey"] == MASK
    values["endpoint"] = "https://example.com/v2"
    await r.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(name=ins_id, settings=settings(**values), etag=shown.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
        ),
        metadata=auth(owner),
    )
    stream = r.stub.WatchConfig(pb.WatchConfigRequest(watcher="mask-test"), metadata=auth(SERVICE))
    try:
        snapshot = await asyncio.wait_for(stream.read(), timeout=10)
    finally:
        stream.cancel()
    assert isinstance(snapshot, pb.WatchConfigResponse)
    (watched,) = [i for i in snapshot.instances if ins_id.endswith(i.id)]
    assert watched.settings["endpoint"] == "https://example.com/v2"
    assert watched.settings["apiKey"] == "sk_live_1", "the stored secret was replaced"
