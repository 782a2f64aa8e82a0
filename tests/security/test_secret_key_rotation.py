"""An attacker holding a data key that was rotated out (a memory dump, a leaked backup of the
key table with the master key) opens nothing stored after the rotation; a workspace owner or
the data plane's token cannot rotate (nor learn anything from trying)."""

from __future__ import annotations

import base64

import asyncpg
import grpc
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventfn_api.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import BOOTSTRAP, SERVICE, Registry, auth, registry
from tests.registry.test_key_rotation import fleet, sealed_values

__all__ = ["registry"]


async def stolen_data_key(r: Registry) -> tuple[str, AESGCM]:
    """Unwrap the current data key with the master key, as an attacker with both would."""
    master = AESGCM(base64.b64decode((r.state_dir / "secret.key").read_text()))
    conn = await asyncpg.connect(r.database_url)
    try:
        row = await conn.fetchrow("SELECT id, wrapped FROM secret_key WHERE state = 'current'")
    finally:
        await conn.close()
    assert row is not None
    wrapped = bytes(row["wrapped"])
    key = master.decrypt(wrapped[:12], wrapped[12:], f"eventfn/secret-key/{row['id']}".encode())
    return row["id"], AESGCM(key)


async def sealed_settings(database_url: str) -> list[tuple[bytes, str]]:
    """Return (AAD, sealed text) of every encrypted setting value stored."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT i.id, e.key, e.value->>'$sealed' AS sealed"
            " FROM instance i, jsonb_each(i.settings) e"
            " WHERE jsonb_typeof(e.value) = 'object' AND e.value->>'$sealed' IS NOT NULL"
        )
    finally:
        await conn.close()
    return [(f"{r['id']}/{r['key']}".encode(), r["sealed"]) for r in rows]


def opens(key: AESGCM, aad: bytes, sealed: str) -> bool:
    raw = base64.b64decode(sealed.rsplit(":", 1)[-1])
    try:
        key.decrypt(raw[:12], raw[12:], aad)
    except InvalidTag:
        return False
    return True


async def test_a_rotated_out_data_key_opens_nothing(registry: Registry) -> None:
    await fleet(registry, "Acme", 3)
    old_id, old_key = await stolen_data_key(registry)
    before = await sealed_values(registry.database_url)
    assert before and all(v.startswith(f"v2:{old_id}:") for v in before)
    settings_before = await sealed_settings(registry.database_url)
    assert len(settings_before) == 3
    assert all(opens(old_key, aad, sealed) for aad, sealed in settings_before), "the key works"

    await registry.stub.RotateSecretKey(pb.RotateSecretKeyRequest(), metadata=auth(BOOTSTRAP))

    after = await sealed_values(registry.database_url)
    assert len(after) == len(before)
    assert not [v for v in after if old_id in v], "a value still names the old key"
    # With the right AAD (the attacker knows instance ids and setting names): nothing opens.
    settings_after = await sealed_settings(registry.database_url)
    assert len(settings_after) == 3
    assert not any(opens(old_key, aad, sealed) for aad, sealed in settings_after)
    conn = await asyncpg.connect(registry.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM secret_key WHERE id = $1", old_id) == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("who", ["owner", "service", "nobody"])
async def test_only_the_bootstrap_administrator_may_rotate(registry: Registry, who: str) -> None:
    acme = await fleet(registry, "Acme", 1)
    tokens = {"owner": acme.owner, "service": SERVICE, "nobody": "efn_not-a-token"}
    before = await sealed_values(registry.database_url)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.RotateSecretKey(pb.RotateSecretKeyRequest(), metadata=auth(tokens[who]))
    expected = (
        grpc.StatusCode.UNAUTHENTICATED if who == "nobody" else grpc.StatusCode.PERMISSION_DENIED
    )
    assert raised.value.code() == expected
    assert await sealed_values(registry.database_url) == before
