"""A token made with an expiring token may not outlive it. Before, a token created with a TTL
(`eventfn tokens create ci --ttl 60`) could mint, for its member, a token that never expires:
a leaked short-lived CI token became a permanent credential, which revoking the leaked one or
waiting for it to expire did not end. An owner's short-lived token could do the same for any
member. Tokens made with a token that does not expire (the bootstrap administrator's, a
workspace's owner token) are unchanged.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.errors import InvalidArgument
from services.registry.rpc_access import token_expiry
from tests.registry.conftest import Registry, auth, registry, ws
from tests.registry.test_flows import duration, expect, violations

__all__ = ["registry"]


async def member_name(registry: Registry, owner: str, email: str) -> str:
    """Add a Functions Read-only member to the owner's workspace; return its name."""
    me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(owner))
    made = await registry.stub.CreateMember(
        pb.CreateMemberRequest(
            parent=me.workspace.name,
            member=res.Member(
                email=email, roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
            ),
        ),
        metadata=auth(owner),
    )
    return made.member.name


async def short_token(
    registry: Registry, owner: str, parent: str, member: str = "", seconds: int = 60
) -> pb.CreateTokenResponse:
    """Have the owner make a token (for `member`, default the owner) that works `seconds`."""
    return await registry.stub.CreateToken(
        pb.CreateTokenRequest(
            parent=parent,
            token=res.Token(member=member, display_name="ci"),
            ttl=duration(seconds),
        ),
        metadata=auth(owner),
    )


def latest(token: res.Token) -> str:
    """The token's expire_time as the registry's errors write it."""
    return token.expire_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_short_lived_token_cannot_mint_a_token_that_never_expires(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Ttl")
    dev = await member_name(registry, owner, "ci@ttl.io")
    short = await short_token(registry, owner, ws(ws_id), dev)

    minted = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=ws(ws_id), token=res.Token(display_name="forever")),
        metadata=auth(short.secret),
    )

    assert minted.token.HasField("expire_time"), "a 60 s token minted a token that never expires"
    assert minted.token.expire_time == short.token.expire_time, (
        f"a token asked with no TTL should expire with the token that made it "
        f"({latest(short.token)}), not at {latest(minted.token)}"
    )


async def test_a_short_lived_token_cannot_mint_a_longer_lived_one(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Ttl longer")
    dev = await member_name(registry, owner, "ci@ttl.io")
    short = await short_token(registry, owner, ws(ws_id), dev)

    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=ws(ws_id), token=res.Token(display_name="year"), ttl=duration(365 * 86400)
            ),
            metadata=auth(short.secret),
        ),
    )

    [(field, description)] = violations(error)
    assert field == "ttl", f"the refusal should name the ttl field, not {field!r}"
    assert latest(short.token) in description, (
        f"the refusal should name the latest allowed time {latest(short.token)}: {description!r}"
    )
    listed = await registry.stub.ListTokens(
        pb.ListTokensRequest(parent=ws(ws_id)), metadata=auth(owner)
    )
    assert "year" not in [t.display_name for t in listed.tokens], "the refused token was made"


async def test_a_shorter_ttl_than_the_calling_token_is_kept(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Ttl shorter")
    short = await short_token(registry, owner, ws(ws_id), seconds=3600)
    before = datetime.now(UTC)

    minted = await registry.stub.CreateToken(
        pb.CreateTokenRequest(
            parent=ws(ws_id), token=res.Token(display_name="brief"), ttl=duration(60)
        ),
        metadata=auth(short.secret),
    )

    expires = minted.token.expire_time.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=60) <= expires <= before + timedelta(seconds=120), (
        f"a 60 s token made with a 1 h token should expire in 60 s, not at {expires}"
    )


async def test_an_owners_short_lived_token_cannot_mint_a_lasting_token_for_another_member(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Ttl owner")
    dev = await member_name(registry, owner, "new@ttl.io")
    short_owner = await short_token(registry, owner, ws(ws_id))

    minted = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=ws(ws_id), token=res.Token(member=dev, display_name="dev")),
        metadata=auth(short_owner.secret),
    )
    assert minted.token.member == dev
    assert minted.token.expire_time == short_owner.token.expire_time, (
        "an owner's 60 s token minted a token for another member that outlives it"
    )

    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=ws(ws_id), token=res.Token(member=dev), ttl=duration(86400)
            ),
            metadata=auth(short_owner.secret),
        ),
    )
    assert [field for field, _ in violations(error)] == ["ttl"], violations(error)


async def test_tokens_that_never_expire_still_mint_tokens_that_never_expire(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Ttl lasting")
    dev = await member_name(registry, owner, "dev@ttl.io")

    for_owner = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=ws(ws_id), token=res.Token(display_name="laptop")),
        metadata=auth(owner),
    )
    for_dev = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=ws(ws_id), token=res.Token(member=dev, display_name="dev")),
        metadata=auth(for_owner.secret),
    )
    long = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=ws(ws_id), ttl=duration(10 * 365 * 86400)),
        metadata=auth(owner),
    )

    assert not for_owner.token.HasField("expire_time"), "the owner token's token expires"
    assert not for_dev.token.HasField("expire_time"), "a lasting token's token expires"
    assert long.token.HasField("expire_time"), "a lasting token's TTL was dropped"


async def test_a_retry_answers_the_first_token_after_the_calling_token_got_shorter(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Ttl retry")
    short = await short_token(registry, owner, ws(ws_id), seconds=3600)
    request = pb.CreateTokenRequest(
        parent=ws(ws_id),
        token=res.Token(display_name="job"),
        ttl=duration(1800),
        request_id=str(uuid.uuid4()),
    )
    first = await registry.stub.CreateToken(request, metadata=auth(short.secret))
    # The calling token now ends before the first answer's 30 minutes: a retry is answered
    # from the record (the same request digest), not checked again and refused.
    conn = await asyncpg.connect(registry.database_url)
    try:
        await conn.execute(
            "UPDATE token SET expires_at = now() + interval '10 minutes' WHERE id = $1",
            short.token.name.rsplit("/", 1)[-1],
        )
    finally:
        await conn.close()

    again = await registry.stub.CreateToken(request, metadata=auth(short.secret))

    assert again.secret == first.secret, "a retry with the same request_id made another token"
    assert again.token == first.token, "a retry answered other metadata than the first call"


@given(
    ttl=st.one_of(st.none(), st.integers(min_value=1, max_value=10**9)),
    left=st.one_of(st.none(), st.integers(min_value=1, max_value=10**9)),
)
def test_a_new_token_never_outlives_the_token_it_is_made_with(
    ttl: int | None, left: int | None
) -> None:
    created = datetime(2030, 1, 1, tzinfo=UTC)
    wanted = created + timedelta(seconds=ttl) if ttl is not None else None
    calling = created + timedelta(seconds=left) if left is not None else None
    try:
        expires = token_expiry(
            created, timedelta(seconds=ttl) if ttl is not None else None, calling
        )
    except InvalidArgument as error:
        assert wanted is not None and calling is not None and wanted > calling, error
        assert [v.field for v in error.violations] == ["ttl"]
        assert f"at most {left} seconds" in str(error), str(error)
        return
    if calling is None:
        assert expires == wanted, "a token made with a lasting token lost its requested TTL"
    else:
        assert expires is not None and expires <= calling, f"{expires} outlives {calling}"
        assert expires == (wanted or calling)
