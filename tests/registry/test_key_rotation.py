"""RotateSecretKey on a running registry: every encrypted value re-sealed under a new data key,
the old key deleted, nothing in clear in the database before, during or after, the data plane
still given the decrypted values, changes made meanwhile kept; replicas and restarts read
everything; the master key changed with EVENTFN_SECRET_KEY_PREVIOUS.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from services.registry.rpc_keys import ROTATION_LOCK
from tests.registry.conftest import (
    BOOTSTRAP,
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    running_registry,
    store_setting_by_hand,
)
from tests.registry.test_flows import new_function, new_instance
from tests.registry.test_secrets_never_leak import rows_containing, struct

HOOK = "http://127.0.0.1:9/hook"


@dataclass
class Fleet:
    """A workspace with instances holding encrypted values, as a test made them."""

    parent: str
    owner: str
    secrets: dict[str, str]  # instance name -> its apiKey in clear


async def fleet(r: Registry, name: str, count: int) -> Fleet:
    """Create a workspace, a function, a source and `count` instances with secrets."""
    ws, owner = await r.workspace(name)
    parent = f"workspaces/{ws}"
    fn = await r.stub.CreateFunction(
        new_function(parent, "Webhook", settings=SETTINGS), metadata=auth(owner)
    )
    src = await r.stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="Web")),
        metadata=auth(owner),
    )
    secrets = {}
    for i in range(count):
        secret = f"sk_live_rotation_{uuid.uuid4().hex}"
        made = await r.stub.CreateInstance(
            new_instance(
                parent,
                fn.function.name,
                src.source.name,
                display_name=f"hook {i}",
                settings=struct(endpoint=f"http://127.0.0.1:9/{i}", apiKey=secret),
            ),
            metadata=auth(owner),
        )
        secrets[made.instance.name] = secret
    return Fleet(parent, owner, secrets)


async def watched(stub: registry_pb2_grpc.RegistryStub) -> dict[str, str]:
    """Return every instance's apiKey as WatchConfig gives it to the data plane."""
    stream = stub.WatchConfig(
        pb.WatchConfigRequest(watcher="rotation-test"), metadata=auth(SERVICE)
    )
    try:
        snapshot = await asyncio.wait_for(stream.read(), timeout=10)
    finally:
        stream.cancel()
    assert isinstance(snapshot, pb.WatchConfigResponse)
    return {i.id: i.settings["apiKey"] for i in snapshot.instances}


def by_id(secrets: dict[str, str]) -> dict[str, str]:
    return {name.rsplit("/", 1)[-1]: value for name, value in secrets.items()}


async def sealed_values(database_url: str) -> list[str]:
    """Return every sealed text stored: instances' settings and kept responses."""
    conn = await asyncpg.connect(database_url)
    try:
        settings = await conn.fetch(
            "SELECT e.value->>'$sealed' AS v FROM instance, jsonb_each(settings) e "
            "WHERE jsonb_typeof(e.value) = 'object' AND e.value->>'$sealed' IS NOT NULL"
        )
        responses = await conn.fetch(
            "SELECT convert_from(response, 'UTF8') AS v FROM request_record"
        )
        return [row["v"] for row in [*settings, *responses]]
    finally:
        await conn.close()


async def key_rows(database_url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, state FROM secret_key ORDER BY created_at")
        return [(row["id"], row["state"]) for row in rows]
    finally:
        await conn.close()


async def current_key(database_url: str) -> str:
    (key,) = [k for k, state in await key_rows(database_url) if state == "current"]
    return key


async def rotate(r: Registry, token: str = BOOTSTRAP) -> pb.RotateSecretKeyResponse:
    return await r.stub.RotateSecretKey(pb.RotateSecretKeyRequest(), metadata=auth(token))


@asynccontextmanager
async def replica(
    database_url: str, state_dir: Path, **settings: str | None
) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    """Run another registry on the same database (a second replica, or a restart)."""
    async with running_registry(database_url, state_dir, **settings) as other:
        yield other.stub


async def test_rotation_reseals_every_value_and_deletes_the_old_key(registry: Registry) -> None:
    r = registry
    acme = await fleet(r, "Acme", 3)
    globex = await fleet(r, "Globex", 2)
    # A kept response holding a secret (a token's), sealed too.
    request_id = str(uuid.uuid4())
    token_request = pb.CreateTokenRequest(
        parent=acme.parent, token=res.Token(display_name="ci"), request_id=request_id
    )
    first = await r.stub.CreateToken(token_request, metadata=auth(acme.owner))
    old = await current_key(r.database_url)
    before = await sealed_values(r.database_url)
    assert before and all(v.startswith(f"v2:{old}:") for v in before)
    clear = by_id(acme.secrets | globex.secrets)

    done = await rotate(r)

    assert done.key_id != old and list(done.retired_key_ids) == [old]
    assert done.resealed_instance_count == 5 and done.resealed_setting_count == 5
    assert done.resealed_request_count >= 1
    assert await key_rows(r.database_url) == [(done.key_id, "current")], "the old key is gone"
    after = await sealed_values(r.database_url)
    assert len(after) == len(before)
    assert all(v.startswith(f"v2:{done.key_id}:") for v in after), after
    assert await rows_containing(r.database_url, f"v2:{old}:", *clear.values()) == []
    # The data plane gets the same clear values; a retry still gets its first response.
    assert {k: v for k, v in (await watched(r.stub)).items() if k in clear} == clear
    again = await r.stub.CreateToken(token_request, metadata=auth(acme.owner))
    assert again.secret == first.secret
    # Audited: the caller's entry with the totals, and each workspace's share as "system".
    assert done.event.action == res.AUDIT_ACTION_SECRET_KEY_ROTATE
    assert done.event.resource_type == res.RESOURCE_TYPE_SECRET_KEY
    assert done.event.resource == f"secretKeys/{done.key_id}"
    details = dict(done.event.details)
    assert details["instances_total"] == 5 and details["retired_keys"] == [old]
    events = await r.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=acme.parent), metadata=auth(acme.owner)
    )
    (mine,) = [e for e in events.events if e.action == res.AUDIT_ACTION_SECRET_KEY_ROTATE]
    assert mine.actor == "system" and dict(mine.details)["instances"] == 3
    for entry in (done.event, mine):
        assert set(dict(entry.details)) <= {
            "key",
            "retired_keys",
            "master_key",
            "instances",
            "settings",
            "instances_total",
            "settings_total",
            "requests_total",
        }


async def test_values_sealed_by_an_earlier_release_are_read_then_resealed(
    registry: Registry,
) -> None:
    """A `v1:` value (sealed directly with the master key) works, and rotation re-seals it."""
    r = registry
    acme = await fleet(r, "Acme", 1)
    ((name, _),) = acme.secrets.items()
    instance_id = name.rsplit("/", 1)[-1]
    master = base64.b64decode((r.state_dir / "secret.key").read_text())
    nonce = os.urandom(12)
    legacy = "sk_live_legacy_" + uuid.uuid4().hex
    ct = AESGCM(master).encrypt(nonce, orjson.dumps(legacy), f"{instance_id}/apiKey".encode())
    sealed = {"$sealed": "v1:" + base64.b64encode(nonce + ct).decode()}
    await store_setting_by_hand(r.database_url, instance_id, "apiKey", sealed)
    assert (await watched(r.stub))[instance_id] == legacy

    done = await rotate(r)

    assert done.resealed_setting_count == 1
    assert all(v.startswith(f"v2:{done.key_id}:") for v in await sealed_values(r.database_url))
    assert (await watched(r.stub))[instance_id] == legacy


async def test_changes_made_during_a_rotation_are_kept(registry: Registry) -> None:
    """UpdateInstance while batches are re-sealed: every last value survives, none in clear."""
    r = registry
    acme = await fleet(r, "Acme", 130)  # more than one batch
    names = list(acme.secrets)[::13]
    latest = dict(acme.secrets)
    stop = asyncio.Event()
    seen_in_clear: list[str] = []

    async def update_all(round_: int) -> None:
        for name in names:
            value = f"sk_live_round{round_}_{uuid.uuid4().hex}"
            await r.stub.UpdateInstance(
                pb.UpdateInstanceRequest(
                    instance=res.Instance(name=name, settings=struct(endpoint=HOOK, apiKey=value)),
                    update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
                ),
                metadata=auth(acme.owner),
            )
            latest[name] = value

    async def updates() -> None:
        round_ = 0
        while not stop.is_set():
            await update_all(round_)
            round_ += 1

    async def watch_database() -> None:
        while not stop.is_set():
            seen_in_clear.extend(await rows_containing(r.database_url, *latest.values()))

    tasks = [asyncio.create_task(updates()), asyncio.create_task(watch_database())]
    try:
        done = await rotate(r)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await update_all(99)  # after the rotation too

    assert seen_in_clear == []
    assert done.resealed_instance_count >= 130 - len(names)
    assert await key_rows(r.database_url) == [(done.key_id, "current")]
    assert all(v.startswith(f"v2:{done.key_id}:") for v in await sealed_values(r.database_url))
    assert {k: v for k, v in (await watched(r.stub)).items()} == by_id(latest)


async def test_another_replica_follows_the_new_key_and_a_restart_reads_everything(
    registry: Registry, tmp_path: Path
) -> None:
    r = registry
    acme = await fleet(r, "Acme", 2)
    # Same master key (the same state dir's secret.key), started before the rotation.
    async with replica(r.database_url, r.state_dir) as other:
        assert await watched(other) == by_id(acme.secrets)
        done = await rotate(r)
        # The other replica seals under the new key it has not seen yet, and reads it.
        name = next(iter(acme.secrets))
        acme.secrets[name] = "sk_live_from_the_other_replica_" + uuid.uuid4().hex
        await other.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(
                    name=name, settings=struct(endpoint=HOOK, apiKey=acme.secrets[name])
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
            ),
            metadata=auth(acme.owner),
        )
        assert await watched(other) == by_id(acme.secrets)
        assert await watched(r.stub) == by_id(acme.secrets)
    assert all(v.startswith(f"v2:{done.key_id}:") for v in await sealed_values(r.database_url))
    async with replica(r.database_url, r.state_dir) as restarted:
        assert await watched(restarted) == by_id(acme.secrets)
    # A registry with another master key does not start: it could read nothing.
    with pytest.raises(RuntimeError, match="EVENTFN_SECRET_KEY_PREVIOUS"):
        async with replica(r.database_url, tmp_path / "elsewhere"):
            pass


async def test_a_rotation_running_elsewhere_is_aborted(registry: Registry) -> None:
    conn = await asyncpg.connect(registry.database_url)
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", ROTATION_LOCK)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rotate(registry)
        assert raised.value.code() == grpc.StatusCode.ABORTED
    finally:
        await conn.close()
    assert (await rotate(registry)).key_id


async def test_only_the_bootstrap_administrator_rotates(registry: Registry) -> None:
    acme = await fleet(registry, "Acme", 1)
    before = await key_rows(registry.database_url)
    for token in (acme.owner, SERVICE):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rotate(registry, token)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await key_rows(registry.database_url) == before


async def test_changing_the_master_key_with_the_previous_one(
    fresh_database: str, tmp_path: Path
) -> None:
    def b64(key: bytes) -> str:
        return base64.b64encode(key).decode()

    old, new = AESGCM.generate_key(bit_length=256), AESGCM.generate_key(bit_length=256)
    async with replica(fresh_database, tmp_path, secret_key=b64(old)) as stub:
        r = Registry(stub, 0, fresh_database, tmp_path)
        acme = await fleet(r, "Acme", 2)
    with pytest.raises(RuntimeError, match="EVENTFN_SECRET_KEY_PREVIOUS"):
        async with replica(fresh_database, tmp_path, secret_key=b64(new)):
            pass
    # Every replica restarted with the new key and the previous one: the data keys are
    # re-wrapped by the new one, and everything reads.
    async with replica(
        fresh_database, tmp_path, secret_key=b64(new), secret_key_previous=b64(old)
    ) as stub:
        assert await watched(stub) == by_id(acme.secrets)
    # Then the previous key can go.
    async with replica(fresh_database, tmp_path, secret_key=b64(new)) as stub:
        assert await watched(stub) == by_id(acme.secrets)
        done = await Registry(stub, 0, fresh_database, tmp_path).stub.RotateSecretKey(
            pb.RotateSecretKeyRequest(), metadata=auth(BOOTSTRAP)
        )
        assert done.resealed_setting_count == 2
        assert await watched(stub) == by_id(acme.secrets)
    with pytest.raises(RuntimeError, match="EVENTFN_SECRET_KEY_PREVIOUS"):
        async with replica(fresh_database, tmp_path, secret_key=b64(old)):
            pass
