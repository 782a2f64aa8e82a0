"""Apply the registry's Alembic migrations at start, once even with several replicas."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every registry replica.
_ADVISORY_LOCK = 0x6576_656E_7466_6E


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic configuration for the registry's migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database schema to the newest migration."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
