"""The bootstrap administrator's powers stay its own. Its tokens create workspaces, list every
tenant and rotate the deployment's keys; an Owner of the bootstrap workspace (added to run it,
as the operations guide suggests, before the bootstrap token is revoked) could mint a token
for the bootstrap member (CreateToken names any member for an owner) and so become it, change
its roles or revoke its tokens. Each is now PERMISSION_DENIED; the administrator itself still
may. And a token's display name is bounded like every other: 15 MiB ones grew the shared
database 78 MiB in five calls of a read-only member and broke the owner's ListTokens."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from pydantic import ValidationError

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.registry.settings import RegistrySettings
from tests.registry.conftest import BOOTSTRAP, Registry, auth, registry, running_registry

__all__ = ["registry"]

ROTATED = "efn_rotated-bootstrap-token-9876543210"


async def denied(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
    return error.value.details() or ""


async def test_a_co_owner_cannot_act_for_the_bootstrap_administrator(registry: Registry) -> None:
    r = registry
    me = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
    assert me.bootstrap_admin
    home, admin = me.workspace.name, me.member.name
    co_owner = await r.member(
        BOOTSTRAP, "ops@example.com", res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)
    )
    listed = await r.stub.ListTokens(pb.ListTokensRequest(parent=home), metadata=auth(BOOTSTRAP))
    (bootstrap_token,) = [t for t in listed.tokens if t.member == admin]

    minted = r.stub.CreateToken(
        pb.CreateTokenRequest(parent=home, token=res.Token(member=admin)), metadata=auth(co_owner)
    )
    assert "bootstrap administrator" in await denied(minted)
    member = await r.stub.GetMember(pb.GetMemberRequest(name=admin), metadata=auth(co_owner))
    demoted = res.Member(
        name=admin,
        roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)],
        etag=member.member.etag,
    )
    await denied(
        r.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=demoted, update_mask=field_mask_pb2.FieldMask(paths=["roles"])
            ),
            metadata=auth(co_owner),
        )
    )
    await denied(
        r.stub.RevokeToken(
            pb.RevokeTokenRequest(name=bootstrap_token.name), metadata=auth(co_owner)
        )
    )
    # Nothing changed: the administrator's token still acts for the deployment.
    still = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
    assert still.bootstrap_admin and list(still.member.roles) == list(me.member.roles)
    # The administrator makes its own tokens; a co-owner its own and other members'.
    own = await r.stub.CreateToken(
        pb.CreateTokenRequest(parent=home, token=res.Token(member=admin)), metadata=auth(BOOTSTRAP)
    )
    assert (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(own.secret))).bootstrap_admin
    await r.stub.CreateToken(pb.CreateTokenRequest(parent=home), metadata=auth(co_owner))


async def test_a_token_display_name_is_bounded(registry: Registry) -> None:
    workspace, owner = await registry.workspace("Tokens")
    reader = await registry.member(
        owner, "ro@example.com", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=f"workspaces/{workspace}", token=res.Token(display_name="t" * 1_000_000)
            ),
            metadata=auth(reader),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "token.display_name" in (refused.value.details() or "")
    listed = await registry.stub.ListTokens(
        pb.ListTokensRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
    )
    assert all(len(t.display_name) <= 100 for t in listed.tokens)
    unnamed = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=f"workspaces/{workspace}"), metadata=auth(reader)
    )
    assert unnamed.token.display_name == "token"


async def test_a_new_bootstrap_token_retires_the_one_configured_before(
    fresh_database: str, tmp_path: Path
) -> None:
    """The checklist says to rotate the bootstrap token; as deployments take it (a new
    EVENTFN_BOOTSTRAP_TOKEN, then the registry restarted) the old one kept working, with the
    whole deployment's powers, for whoever had copied it."""
    async with running_registry(fresh_database, tmp_path) as r:
        me = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
        own = await r.stub.CreateToken(
            pb.CreateTokenRequest(parent=me.workspace.name), metadata=auth(BOOTSTRAP)
        )
    async with running_registry(fresh_database, tmp_path, bootstrap_token=ROTATED) as r:
        assert (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(ROTATED))).bootstrap_admin
        with pytest.raises(grpc.aio.AioRpcError) as retired:
            await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
        assert retired.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Tokens the administrator made for itself are its own to revoke.
        assert (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(own.secret))).bootstrap_admin


async def test_rolling_the_bootstrap_token_back_registers_it_again(
    fresh_database: str, tmp_path: Path
) -> None:
    """Rotated and then rolled back (a reverted configuration, an old replica restarting), the
    configured token was dead (revoked by the rotation) and the removed one alive. And no
    other token may take the configured one's name, which rotation replaces."""
    for configured in (BOOTSTRAP, ROTATED):
        async with running_registry(fresh_database, tmp_path, bootstrap_token=configured):
            pass
    async with running_registry(fresh_database, tmp_path) as r:  # BOOTSTRAP again
        assert (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))).bootstrap_admin
        with pytest.raises(grpc.aio.AioRpcError) as removed:
            await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(ROTATED))
        assert removed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        me = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
        with pytest.raises(grpc.aio.AioRpcError) as reserved:
            await r.stub.CreateToken(
                pb.CreateTokenRequest(
                    parent=me.workspace.name, token=res.Token(display_name="bootstrap")
                ),
                metadata=auth(BOOTSTRAP),
            )
        assert reserved.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_no_owner_sees_any_of_the_bootstrap_token(
    fresh_database: str, tmp_path: Path
) -> None:
    """Every owner of the bootstrap workspace read the bootstrap token's first 8 characters
    (its `prefix`): an operator's choice, of any length, and the whole deployment's key. A
    token registered so by an older release loses them when the database is migrated, even
    by a registry started without EVENTFN_BOOTSTRAP_TOKEN (an operator told to choose a longer
    one unsets it)."""
    async with running_registry(fresh_database, tmp_path) as r:
        me = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
        co_owner = await r.member(
            BOOTSTRAP, "ops@example.com", res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)
        )
        conn = await asyncpg.connect(fresh_database)
        try:
            # As a release before migration 0011 left it.
            await conn.execute(
                "UPDATE token SET prefix = $1 WHERE name = 'bootstrap'", BOOTSTRAP[:8]
            )
            await conn.execute("UPDATE alembic_version SET version_num = '0010'")
        finally:
            await conn.close()
    async with running_registry(fresh_database, tmp_path, bootstrap_token="") as r:
        listed = await r.stub.ListTokens(
            pb.ListTokensRequest(parent=me.workspace.name), metadata=auth(co_owner)
        )
        (bootstrap_token,) = [t for t in listed.tokens if t.member == me.member.name]
        got = await r.stub.GetToken(
            pb.GetTokenRequest(name=bootstrap_token.name), metadata=auth(co_owner)
        )
        assert bootstrap_token.prefix == got.token.prefix == ""
        # The co-owner's own tokens keep theirs: made by the registry, random.
        assert all(t.prefix for t in listed.tokens if t.member != me.member.name)


@pytest.mark.parametrize("token", ["admin", "efn_" + "x" * 27])
def test_a_short_bootstrap_token_is_refused_at_start(token: str) -> None:
    with pytest.raises(ValidationError, match=r"EVENTFN_BOOTSTRAP_TOKEN has .* at least 32"):
        RegistrySettings(database_url="postgresql://x@127.0.0.1/x", bootstrap_token=token)
    assert RegistrySettings(
        database_url="postgresql://x@127.0.0.1/x", bootstrap_token="efn_" + "x" * 28
    ).bootstrap_token
    # Set empty, it is unset (as before).
    assert (
        RegistrySettings(database_url="postgresql://x@h/x", bootstrap_token="").bootstrap_token
        is None
    )
