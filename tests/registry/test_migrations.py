"""Alembic migrations: up from an empty database, schema equal to the models, down and up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.settings import sqlalchemy_url
from services.registry.migrate import alembic_config, migrate
from services.registry.models import SQLModel

TABLES = set(SQLModel.metadata.tables)  # every table of the models
REGISTRY_TABLES = {
    "workspace",
    "member",
    "token",
    "source",
    "function",
    "function_version",
    "instance",
    "audit_event",
    "config_state",
    "config_change",
    "request_record",
    "secret_key",
}


@pytest.fixture
async def engine(fresh_database: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database."""
    engine = create_async_engine(sqlalchemy_url(fresh_database))
    yield engine
    await engine.dispose()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _describe(diff: Any) -> str:
    """Render one compare_metadata entry as a short line, e.g. "modify_type t.c: TEXT -> X"."""
    op = diff[0] if isinstance(diff, list) else diff
    if op[0] == "modify_type":
        return f"modify_type {op[2]}.{op[3]}: database {op[5]} vs model {op[6]!r}"
    return " ".join(str(part) for part in op)


def _differences(conn: Connection) -> list[str]:
    return [
        _describe(d) for d in compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    ]


def _schema(conn: Connection) -> dict[str, Any]:
    """Describe every table: columns with types, keys, unique constraints, indexes."""
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in insp.get_table_names():
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], str(f.get("options")))
                for f in insp.get_foreign_keys(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)
            ),
        }
    return out


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(_schema)) - {"alembic_version"}


async def test_upgrade_from_empty(engine: AsyncEngine) -> None:
    assert await _tables(engine) == set(), "fresh_database must start empty"
    await migrate(engine)
    assert REGISTRY_TABLES <= TABLES
    assert await _tables(engine) == TABLES
    async with engine.connect() as conn:
        assert await conn.run_sync(_revision) == _head()
        state = (await conn.execute(text("SELECT id, revision FROM config_state"))).all()
    assert [tuple(r) for r in state] == [(1, 0)]


async def test_schema_after_upgrade_matches_the_models(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.connect() as conn:
        differences = await conn.run_sync(_differences)
    assert differences == [], (
        "the models and the migrations disagree (autogenerate would emit these):\n  "
        + "\n  ".join(differences)
    )


async def test_migrate_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.connect() as conn:
        before = await conn.run_sync(_schema)
    await migrate(engine)  # every restart runs it again
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema) == before
        assert await conn.run_sync(_revision) == _head()


async def test_downgrade_to_base_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.connect() as conn:
        first = await conn.run_sync(_schema)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
    assert await _tables(engine) == set()
    async with engine.connect() as conn:
        assert await conn.run_sync(_revision) is None
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema) == first
        assert await conn.run_sync(_revision) == _head()
        state = (await conn.execute(text("SELECT revision FROM config_state"))).scalars().all()
    assert state == [0]


async def test_audit_entries_of_before_0010_get_ids_of_their_own(engine: AsyncEngine) -> None:
    """Named by their row number before (numbered across every workspace), entries written
    then are given ids of the new form: their millisecond, then random bits."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0009"))
        for workspace in ("ws_a", "ws_b", "ws_a"):
            await conn.execute(
                text(
                    "INSERT INTO audit_event (workspace_id, actor_member_id, actor_email, "
                    "action, resource_type, resource_id, details, created_at) VALUES (:ws, "
                    "'system', 'system', 'source.update', 'source', 'src_1', '{}', "
                    "'2026-12-03T09:00:00.123Z')"
                ),
                {"ws": workspace},
            )
    await migrate(engine)
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT public_id FROM audit_event"))).scalars().all()
    millisecond = f"aud_{1_796_288_400_123:012x}"
    assert len(set(ids)) == 3
    assert all(i.startswith(millisecond) and len(i) == len(millisecond) + 16 for i in ids), ids


async def test_an_older_registry_writing_audit_entries_after_0010_names_them_too(
    engine: AsyncEngine,
) -> None:
    """A rolling upgrade: the registry of the release before knows no `public_id` and keeps
    writing entries while (and after) the new one migrates."""
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_event (workspace_id, actor_member_id, actor_email, action, "
                "resource_type, resource_id, details, created_at) VALUES ('ws_a', 'system', "
                "'system', 'source.update', 'source', 'src_1', '{}', now())"
            )
        )
        (named,) = (await conn.execute(text("SELECT public_id FROM audit_event"))).scalars()
    assert named.startswith("aud_") and len(named) == len("aud_") + 28
