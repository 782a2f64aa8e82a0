"""The embedded servers of `eventfn up` and the tests. PostgreSQL listened on loopback with `trust`:
every local account could connect as the superuser, and by `COPY … TO PROGRAM` run commands
as the operator, reading the bootstrap token and the master key beside it. The `postgres`
role now has a password (in the data dir, mode 600) and the server asks for it; a cluster an
earlier version made with `trust` gets it at its next start."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.errors
import pytest

from services.cli.context import without_password
from services.devtools.embedded import EmbeddedNats, EmbeddedPostgres


async def refused_without_password(pg: EmbeddedPostgres) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres:guess@127.0.0.1:{pg.port}/postgres")


async def test_another_local_account_needs_the_password(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "pg") as pg:
        await refused_without_password(pg)
        conn = await asyncpg.connect(pg.url)
        await conn.close()
        kept = tmp_path / "pg" / "password"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert kept.read_text().strip() == pg.password
        assert not (tmp_path / "pg" / "pgdata.password").exists()


async def test_a_cluster_made_with_trust_gets_the_password(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    # What an earlier version left: a role without a password, every local connection trusted.
    async with EmbeddedPostgres(data) as pg:
        conn = await asyncpg.connect(pg.url)
        await conn.execute("ALTER ROLE postgres PASSWORD NULL")
        await conn.close()
    hba = data / "pgdata" / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    (data / "password").unlink()

    async with EmbeddedPostgres(data) as pg:
        await refused_without_password(pg)
        conn = await asyncpg.connect(pg.url)
        await conn.close()
        methods = [
            line.split()[-1]
            for line in hba.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert methods and "trust" not in methods, methods


async def test_another_local_account_needs_the_nats_password(tmp_path: Path) -> None:
    """The embedded NATS took anonymous clients on loopback: any local account read every
    tenant's events, forged packs the executor ran with the tenant's settings, and purged the
    dead letters. Clients now sign in with a password (mode 600 in the data dir)."""
    async with EmbeddedNats(tmp_path / "nats") as server:
        for url in (
            f"nats://127.0.0.1:{server.port}",
            f"nats://eventfn:guess@127.0.0.1:{server.port}",
        ):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        nc = await nats.connect(server.url)
        await nc.close()
        for kept in (tmp_path / "nats" / "password", server.config_path):
            assert stat.S_IMODE(kept.stat().st_mode) == 0o600, kept


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cret-pw@127.0.0.1:5432/eventfn",
        "nats://eventfn:s3cret-pw@127.0.0.1:4222",
        "nats://s3cret-pw@nats.internal:4222",  # a NATS token
        "postgresql://u@db.internal/eventfn?sslmode=require&password=s3cret-pw",
        "nats://a:s3cret-pw@n1:4222,nats://a:s3cret-pw@n2:4222",
    ],
)
def test_urls_are_shown_without_their_secrets(url: str) -> None:
    """`eventfn up` prints where PostgreSQL and NATS are (and records it for the CLI): never
    with the password or token they carry."""
    shown = without_password(url)
    assert "s3cret-pw" not in shown
    assert urlsplit(shown).hostname == urlsplit(url.split(",")[0]).hostname
