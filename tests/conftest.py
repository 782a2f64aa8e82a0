"""Session-wide real PostgreSQL and NATS servers, started lazily on first use."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient

from services.devtools.embedded import EmbeddedNats, EmbeddedPostgres

# Services started by tests (in-process or as subprocesses) serve /metrics on ports of their
# own choosing, never the fixed defaults several of them would share.
for _service in ("REGISTRY", "ROUTER", "EXECUTOR", "RETRIER"):
    os.environ.setdefault(f"EVENTFN_{_service}_METRICS_LISTEN", "127.0.0.1:0")


def _server_dir(kind: str) -> Iterator[Path]:
    """Make a data dir outside pytest's basetemp, which a concurrent pytest run may rotate away."""
    path = Path(tempfile.mkdtemp(prefix=f"eventfn-test-{kind}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dir() -> Iterator[Path]:
    """Data dir of the session PostgreSQL."""
    yield from _server_dir("postgres")


@pytest.fixture(scope="session")
def nats_dir() -> Iterator[Path]:
    """Data dir of the session NATS."""
    yield from _server_dir("nats")


@pytest.fixture(scope="session")
def postgres_server(postgres_dir: Path) -> Iterator[EmbeddedPostgres]:
    """Run one real PostgreSQL for the whole session (started only if a test needs it)."""
    # Room for many short-lived pools: each test may open its own engine.
    # stop_with_parent: a killed test run (timeout, Ctrl-C twice) leaves no server behind.
    server = EmbeddedPostgres(
        postgres_dir,
        options={"max_connections": "300"},
        stop_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: EmbeddedPostgres) -> str:
    """Return the URL of the session server's `eventfn` database (asyncpg DSN form)."""
    return postgres_server.url


async def _create_database(server: EmbeddedPostgres) -> str:
    """Create an empty database with a unique name and return its name."""
    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server.url_for("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_database(server: EmbeddedPostgres, name: str) -> None:
    """Drop a test database even if a test leaked connections to it."""
    admin = await asyncpg.connect(server.url_for("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def fresh_database(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """Create an empty database for one test and return its URL; drop it afterwards."""
    name = await _create_database(postgres_server)
    yield postgres_server.url_for(name)
    await _drop_database(postgres_server, name)


@pytest.fixture(scope="module")
async def module_database(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """Create an empty database shared by one test module (migrate once, test many)."""
    name = await _create_database(postgres_server)
    yield postgres_server.url_for(name)
    await _drop_database(postgres_server, name)


@pytest.fixture(scope="session")
def nats_server(nats_dir: Path) -> Iterator[EmbeddedNats]:
    """Run one real nats-server with JetStream for the whole session (started on first use)."""
    server = EmbeddedNats(nats_dir, stop_with_parent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    """Return the client URL of the session NATS server."""
    return nats_server.url


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    """Connect to the session NATS server for one test; close the connection afterwards."""
    client = await nats.connect(nats_url)
    yield client
    await client.close()
