"""What the registry deletes once it is past its time: request records after their day, tokens
a month after they were revoked or expired, audit entries after
`EVENTFN_REGISTRY_AUDIT_RETENTION_DAYS`. Each grew for as long as the registry ran (request
records were dropped only at start, the others never); what is not past its time stays."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.settings import sqlalchemy_url
from services.registry import housekeeping
from services.registry.housekeeping import Housekeeping
from services.registry.store import RegistryStore, audit_id
from tests.eventually import eventually
from tests.registry.conftest import BOOTSTRAP, Registry, auth, make_source, running_registry

DAY = timedelta(days=1)


async def mint(registry: Registry, owner: str, workspace: str, name: str) -> str:
    made = await registry.stub.CreateToken(
        pb.CreateTokenRequest(
            parent=f"workspaces/{workspace}",
            token=res.Token(display_name=name),
            request_id=str(uuid.uuid4()),  # kept a day for retries
        ),
        metadata=auth(owner),
    )
    return made.token.name.rsplit("/", 1)[-1]


async def sql(database_url: str, query: str, *args: object) -> list[object]:
    """Run one statement straight in PostgreSQL (moving rows back in time, as only time
    would); return its rows' first column."""
    conn = await asyncpg.connect(database_url)
    try:
        return [r[0] for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def swept(database_url: str) -> None:
    """Wait until the audit entry aged past the retention is gone (a sweep's last step)."""
    await eventually(
        lambda: sql(database_url, "SELECT id FROM audit_event WHERE action = 'source.create'"),
        "the aged audit entry deleted",
        until=lambda found: not found,
    )


async def test_a_registry_deletes_at_start_what_is_past_its_time_and_keeps_the_rest(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(fresh_database, tmp_path) as registry:
        workspace, owner = await registry.workspace("Acme")
        tokens = {n: await mint(registry, owner, workspace, n) for n in ("old", "recent", "ended")}
        for name in ("old", "recent"):
            await registry.stub.RevokeToken(
                pb.RevokeTokenRequest(name=f"workspaces/{workspace}/tokens/{tokens[name]}"),
                metadata=auth(owner),
            )
        await make_source(registry, owner, "web")
    now = datetime.now(UTC)
    for column, name, when in [
        ("revoked_at", "old", now - 31 * DAY),
        ("revoked_at", "recent", now - 29 * DAY),
        ("expires_at", "ended", now - 31 * DAY),
    ]:
        await sql(
            fresh_database, f"UPDATE token SET {column} = $1 WHERE id = $2", when, tokens[name]
        )
    old = now - 401 * DAY
    await sql(
        fresh_database,
        "UPDATE audit_event SET public_id = $1, created_at = $2 WHERE action = 'source.create'",
        audit_id(old),
        old,
    )
    records = await sql(fresh_database, "SELECT request_id FROM request_record")
    await sql(
        fresh_database,
        "UPDATE request_record SET created_at = $1 WHERE request_id = $2",
        now - 25 * timedelta(hours=1),
        records[0],
    )

    async with running_registry(fresh_database, tmp_path) as registry:
        await swept(fresh_database)  # in the background, as the registry starts
        listed = await registry.stub.ListTokens(
            pb.ListTokensRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
        )
        kept = {t.name.rsplit("/", 1)[-1] for t in listed.tokens}
        assert tokens["recent"] in kept  # revoked 29 days ago: still listed
        assert not kept & {tokens["old"], tokens["ended"]}
        audited = await registry.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=f"workspaces/{workspace}", page_size=100),
            metadata=auth(owner),
        )
        actions = [e.action for e in audited.events]
        assert res.AUDIT_ACTION_SOURCE_CREATE not in actions
        assert res.AUDIT_ACTION_TOKEN_REVOKE in actions
    assert await sql(fresh_database, "SELECT request_id FROM request_record") == records[1:]


@pytest.mark.parametrize("retention_days", [None, 400])
async def test_audit_entries_go_in_batches_past_the_retention_and_only_then(
    fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retention_days: int | None
) -> None:
    async with running_registry(fresh_database, tmp_path) as registry:
        _, owner = await registry.workspace("Acme")
        for i in range(5):
            await make_source(registry, owner, f"s{i}")
    entries = await sql(fresh_database, "SELECT public_id FROM audit_event")
    assert len(entries) > 2
    monkeypatch.setattr(housekeeping, "BATCH", 2)  # a sweep goes on past its first batch
    engine = create_async_engine(sqlalchemy_url(fresh_database))
    try:
        sweeper = Housekeeping(
            RegistryStore(engine), timedelta(days=retention_days) if retention_days else None
        )
        assert (await sweeper.sweep(datetime.now(UTC) + 399 * DAY)).get("audit entries", 0) == 0
        gone = await sweeper.sweep(datetime.now(UTC) + 401 * DAY)
    finally:
        await engine.dispose()
    left = await sql(fresh_database, "SELECT public_id FROM audit_event")
    if retention_days is None:
        assert "audit entries" not in gone and left == entries
    else:
        assert gone["audit entries"] == len(entries) and left == []


async def test_a_revoked_bootstrap_token_stays_revoked_however_old(
    fresh_database: str, tmp_path: Path
) -> None:
    """Its revoked row is what keeps EVENTFN_BOOTSTRAP_TOKEN from being registered again at
    the next start: swept after a month, a leaked bootstrap token came back to life."""
    async with running_registry(fresh_database, tmp_path) as registry:
        # Another member's revoked token: its going shows the sweep has run.
        workspace, owner = await registry.workspace("Acme")
        other = await mint(registry, owner, workspace, "other")
        await registry.stub.RevokeToken(
            pb.RevokeTokenRequest(name=f"workspaces/{workspace}/tokens/{other}"),
            metadata=auth(owner),
        )
        me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
        listed = await registry.stub.ListTokens(
            pb.ListTokensRequest(parent=me.workspace.name), metadata=auth(BOOTSTRAP)
        )
        [bootstrap] = listed.tokens
        await registry.stub.RevokeToken(
            pb.RevokeTokenRequest(name=bootstrap.name), metadata=auth(BOOTSTRAP)
        )
    await sql(fresh_database, "UPDATE token SET revoked_at = $1", datetime.now(UTC) - 400 * DAY)
    for _ in range(2):  # the start that sweeps, and the one after
        async with running_registry(fresh_database, tmp_path) as registry:
            await eventually(
                lambda: sql(fresh_database, "SELECT id FROM token WHERE id = $1", other),
                "the other member's revoked token deleted",
                until=lambda found: not found,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
