"""A hostile destination holds a function's fetch open: it accepts and never answers, or
answers a byte at a time forever. The fetch has no timeout of aiohttp's own (issue 16), so
the invocation's deadline is what ends it: the event is retried as a Timeout, in time, and
the worker serves the next invocation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.runtime import OutcomeKind, RuntimePool
from tests.runtime.conftest import invoke, pool

__all__ = ["pool"]


@pytest_asyncio.fixture
async def hostile() -> AsyncIterator[str]:
    """A loopback server: `/silent` never answers, `/trickle` sends a chunk of one byte
    every 50 ms (chunked: no length to refuse up front)."""
    stop = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            if b" /trickle " in head:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while not stop.is_set():
                    writer.write(b"1\r\nx\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            else:
                await stop.wait()  # silent: hold the connection
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    stop.set()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("path", ["/silent", "/trickle"])
async def test_a_destination_that_holds_the_fetch_ends_at_the_deadline(
    pool: RuntimePool, hostile: str, path: str
) -> None:
    url = hostile + path
    code = f"async function onTrack() {{ const r = await fetch('{url}'); await r.text() }}"
    started = time.monotonic()
    result = await invoke(pool, code, timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert (result.outcomes[0].kind, result.outcomes[0].error_type) == (
        OutcomeKind.RETRY,
        "Timeout",
    )
    assert result.requests[0].error == f"network timeout at: {url}"
    # The worker is free again at once.
    started = time.monotonic()
    after = await invoke(pool, "async function onTrack() { return 1 }")
    assert after.outcomes[0].kind == OutcomeKind.DELIVERED
    assert time.monotonic() - started < 2
