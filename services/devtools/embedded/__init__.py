"""Launchers for the real PostgreSQL and NATS servers shipped by the project's wheels.

Used by `eventfn up` and by the test fixtures::

    async with EmbeddedPostgres(state / "postgres") as pg, EmbeddedNats(state / "nats") as nats:
        ...  # pg.url, nats.url

or, synchronously, `start()` / `stop()`. Each launcher owns its data dir (an
exclusive lock; a second launcher on it gets DataDirInUseError), keeps its data
between runs and recovers from an unclean stop. With EVENTFN_DATABASE_URL /
EVENTFN_NATS_URL set, callers use those servers instead and start neither.
"""

from services.devtools.embedded.errors import (
    DataDirInUseError,
    EmbeddedServerError,
    ServerBinaryNotFoundError,
    ServerStartError,
)
from services.devtools.embedded.nats import EmbeddedNats, nats_server_binary
from services.devtools.embedded.postgres import EmbeddedPostgres, postgres_bin_dir

__all__ = [
    "DataDirInUseError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "ServerBinaryNotFoundError",
    "ServerStartError",
    "nats_server_binary",
    "postgres_bin_dir",
]
