"""What an executor holds while PostgreSQL is away. Delivery records that could not be written
are kept for the next flush: the counts (a few numbers an instance and minute), and every
failure sample, without bound (each up to ≈ 0.5 MB; an hour's outage with tenants' functions
failing took gigabytes). The newest `held_samples` are kept; counts are kept whole, and all is
written once the database is back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.common.deliveries.recorder import DeliveryRecorder, FailureSample
from tests.registry.conftest import Registry, registry
from tests.runtime.fake_apis import pipe

__all__ = ["registry"]
HELD = 5


class Link:
    """A TCP link to PostgreSQL that can be cut (its connections closed, new ones refused)
    and mended on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def failure(n: int) -> FailureSample:
    return FailureSample(
        instance_id=f"ins_held_{n}",
        time=datetime.now(UTC),
        message_id=f"m{n}",
        version_id="ver_1",
        outcome="failed",
        error_type="Error",
        error_message=f"failure {n}",
        error_stack="",
        event='{"type":"track"}',
        logs="",
    )


async def test_an_outage_holds_the_newest_samples_and_every_count(registry: Registry) -> None:
    url = urlsplit(registry.database_url)
    link = Link(url.hostname or "127.0.0.1", url.port or 5432)
    await link.open()
    through = urlunsplit(
        url._replace(netloc=f"{url.netloc.rsplit('@', 1)[0]}@127.0.0.1:{link.port}")
    )
    recorder = DeliveryRecorder(
        through, flush_seconds=3600, samples_per_minute=100, held_samples=HELD
    )
    await recorder.start()
    try:
        await link.cut()
        for n in range(3 * HELD):
            assert recorder.sample(failure(n))
            recorder.count("ins_held_0", "ws_held", "fn_1", {"failed": 1})
            await recorder.flush()  # refused: the link is cut
        await link.open()
        await recorder.flush()
    finally:
        await recorder.close()
    conn = await asyncpg.connect(registry.database_url)
    try:
        kept = await conn.fetch(
            "SELECT error_message FROM delivery_failure WHERE instance_id LIKE 'ins_held_%' "
            "ORDER BY id"
        )
        failed = await conn.fetchval(
            "SELECT sum(failed) FROM delivery_minute WHERE workspace_id = 'ws_held'"
        )
    finally:
        await conn.close()
    assert [r["error_message"] for r in kept] == [f"failure {n}" for n in range(2 * HELD, 3 * HELD)]
    assert failed == 3 * HELD
