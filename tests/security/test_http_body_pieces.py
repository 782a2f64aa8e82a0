"""A chunked body in one-byte chunks, without a write key. uvicorn adds each piece of a body
to a bytes object, copying all that came before each time: the ≈ 42,000 chunks one read may
hold copied ≈ 0.9 GB and held the shared loop 130 ms, so one client sending 1-byte chunks kept
the router's CPU busy (≈ 24 times the cost of the same bytes in normal chunks). The pieces
are gathered in place now, and a body in more than MAX_BODY_PIECES chunks averaging under
MIN_CHUNK_BYTES is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.security.test_http_head_limits import answered_at_once, exchange, serving


async def length(scope: dict, receive: object, send: object) -> None:
    """Answer the body's length."""
    size = 0
    while True:
        message = await receive()  # type: ignore[operator]
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for bound in serving(length):
        yield bound


HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_body_in_one_byte_chunks_is_refused(port: int) -> None:
    chunks = b"1\r\na\r\n" * 100_000
    answer, _ = await exchange(port, [HEAD, chunks, b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"send larger chunks" in answer
    await answered_at_once(port)


async def test_a_body_in_reasonable_chunks_is_read_whole(port: int) -> None:
    piece = b"a" * 4096
    chunk = b"1000\r\n" + piece + b"\r\n"
    count = 125  # 500 KB, far under MAX_BODY_PIECES pieces
    answer, _ = await exchange(port, [HEAD, chunk * count, b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert answer.endswith(str(4096 * count).encode())


async def test_a_body_streamed_an_event_a_chunk_is_read_whole(port: int) -> None:
    # A streaming serializer writes each event and each separator as a chunk of its own.
    event = b"{" + b"x" * 173 + b"}"
    chunks = (b"af\r\n" + event + b"\r\n" + b"1\r\n,\r\n") * 2100
    answer, _ = await exchange(port, [HEAD, chunks, b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert answer.endswith(str(2100 * 176).encode())
