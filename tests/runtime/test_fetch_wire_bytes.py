"""What servers send and functions ask that is not text a JSON report carries: a response
header or status text in latin-1 (a Content-Disposition filename, say) made every invocation
fetching it a RuntimeInternalError (aiohttp keeps the bytes as lone surrogates, which the
worker could not encode); a round of requests all refused before sending (a method that is
no token) crashed the worker's fetch round. Node reads header bytes as latin-1, and refuses
such a request to the function alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, value_of


@pytest_asyncio.fixture
async def latin1_server() -> AsyncIterator[str]:
    """A server answering every request with latin-1 bytes in a header and the status text."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 Ok\xe9\r\n"
            b"Content-Disposition: attachment; filename=caf\xe9.csv\r\n"
            b"X-Utf8: caf\xc3\xa9\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/file"


async def test_response_header_bytes_read_as_node_reads_them(
    pool: RuntimePool, latin1_server: str
) -> None:
    code = f"""async function onTrack() {{
      const r = await fetch('{latin1_server}')
      return [r.status, r.statusText, r.headers.get('content-disposition'),
              r.headers.get('x-utf8'), await r.text()]
    }}"""
    assert value_of(await invoke(pool, code)) == [
        200,
        "Ok\u00e9",
        "attachment; filename=caf\u00e9.csv",
        "caf\u00c3\u00a9",  # UTF-8 bytes, each a character, as in Node
        "ok",
    ]


async def test_a_round_of_refused_requests_fails_those_requests_alone(
    pool: RuntimePool, latin1_server: str
) -> None:
    code = f"""async function onTrack() {{
      const errors = []
      for (const init of [{{method: 'G T'}}, {{headers: {{'x-a': 'v\\u0000'}}}}]) {{
        try {{ await fetch('{latin1_server}', init) }} catch (e) {{ errors.push(e.name) }}
      }}
      return [errors.length, (await fetch('{latin1_server}')).status]
    }}"""
    assert value_of(await invoke(pool, code)) == [2, 200]
