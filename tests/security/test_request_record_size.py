"""What a retry-safe create costs the database beside the resource itself. A CreateInstance
with a request_id kept its whole response for a day, settings included, sealed and in hex:
250 KB of settings made a record of 668 KB (a create-and-delete loop at the change budget,
6.7 MB a second), and a Save & Deploy kept every deployed instance's. Records keep instances
without their settings now; a retry gets them from the instance, as a read does."""

from __future__ import annotations

import asyncpg

from eventfn_api.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import HANDLER, SETTINGS, Registry, auth, registry
from tests.registry.test_flows import make_function, new_instance, parent_of, settings
from tests.registry.test_retry_safety import lose_reply, rid

__all__ = ["registry"]
LARGE = "x" * 200_000


async def record_bytes(registry: Registry, request_id: str) -> int:
    conn = await asyncpg.connect(registry.database_url)
    try:
        size = await conn.fetchval(
            "SELECT octet_length(response) FROM request_record WHERE request_id = $1", request_id
        )
    finally:
        await conn.close()
    assert size is not None
    return size


async def test_a_kept_response_holds_no_instance_settings(registry: Registry) -> None:
    _, owner = await registry.workspace("Records")
    md = auth(owner)
    parent = await parent_of(registry, owner)
    function, source = await make_function(registry, owner)
    create = new_instance(
        parent, function, source, settings=settings(endpoint="https://example.com", apiKey=LARGE)
    )
    create.request_id = rid()
    await lose_reply(registry.stub.CreateInstance(create, metadata=md))
    made = await registry.stub.CreateInstance(create, metadata=md)
    assert made.instance.settings["endpoint"] == "https://example.com"
    assert await record_bytes(registry, create.request_id) < 10_000
    assert await registry.stub.CreateInstance(create, metadata=md) == made

    unlisted = settings(endpoint="https://example.com/" + LARGE[:100_000], apiKey="k")
    other = new_instance(parent, function, source, settings=unlisted, display_name="other")
    second = await registry.stub.CreateInstance(other, metadata=md)
    save = pb.SaveFunctionRequest(
        name=function,
        code=HANDLER + "//2",
        settings=SETTINGS,
        deploy_instances=[made.instance.name, second.instance.name],
        request_id=rid(),
    )
    await lose_reply(registry.stub.SaveFunction(save, metadata=md))
    saved = await registry.stub.SaveFunction(save, metadata=md)
    assert {i.settings["endpoint"] for i in saved.deployed_instances} == {
        "https://example.com",
        unlisted["endpoint"],
    }
    assert await record_bytes(registry, save.request_id) < 10_000
    assert await registry.stub.SaveFunction(save, metadata=md) == saved
