"""What one connection may make the router hold before it answers, without a write key.
httptools and uvicorn set no limit on a request head and grow a header value or URL by
concatenation (83 MB of one header held the shared loop 10 s; 120 MB of small headers took
1.9 GB, kept after the close), and uvicorn queues every request a read holds when they are
sent ahead of their answers, reading on after each answer (12 MB of `GET /` took 1.3 GB and
11 s of CPU). A head past 64 KB is answered 431 and the connection closed; more than 100
requests sent ahead, 400 and closed; the next client is served at once."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator

import pytest

from services.router.http_server import MAX_HEAD_BYTES, MAX_PIPELINED, serve_http


async def ok(scope: dict, receive: object, send: object) -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    await send(start)  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


async def serving(app: object) -> AsyncIterator[int]:
    """Serve `app` on a free port for a test; yield the port."""
    server, task, bound = await serve_http(
        app, "127.0.0.1", 0, max_connections=50, keepalive_seconds=5, refuse=app
    )
    yield bound
    server.should_exit = True
    await task


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for bound in serving(ok):
        yield bound


async def exchange(port: int, chunks: list[bytes]) -> tuple[bytes, int]:
    """Send `chunks` (until the server closes); return what it answered before closing (a
    close with bytes of ours unread resets the connection: its answer may be lost then) and
    how many bytes were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read())
    sent = 0
    try:
        for chunk in chunks:
            if reading.done():
                break
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += len(chunk)
        await asyncio.wait_for(reading, 30)
        return bytes(answer), sent
    finally:
        writer.close()


async def answered_at_once(port: int) -> None:
    started = time.perf_counter()
    answer, _ = await exchange(port, [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert time.perf_counter() - started < 1.0


async def test_a_huge_header_is_refused_without_being_read(port: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    answer, sent = await exchange(port, [head] + [b"a" * 65536] * 400)  # 26 MB offered
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
    # What the kernels' socket buffers take on top of what the router read (a few MB).
    assert sent < 8 * 1024 * 1024, f"{sent} bytes sent before the refusal"
    assert not answer or b'"code":"header_too_large"' in answer, answer[:200]
    assert used < 2.0, f"{used:.1f} s of CPU"
    await answered_at_once(port)


async def test_many_headers_are_refused_past_the_limit(port: int) -> None:
    lines = b"X-a: b\r\n" * (MAX_HEAD_BYTES // 8)
    sent = [b"GET / HTTP/1.1\r\nHost: x\r\n"] + [lines] * 400  # 26 MB offered
    answer, read = await exchange(port, sent)
    assert read < 8 * 1024 * 1024, f"{read} bytes sent before the refusal"
    assert not answer or answer.startswith(b"HTTP/1.1 431"), answer[:80]
    await answered_at_once(port)


async def test_requests_sent_far_ahead_of_their_answers_are_refused(port: int) -> None:
    many = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000  # 2.8 MB in one write
    answer, _ = await exchange(port, [many])
    assert answer.count(b"HTTP/1.1 200") <= MAX_PIPELINED + 1
    await answered_at_once(port)


async def test_a_few_requests_sent_ahead_are_all_answered(port: int) -> None:
    few = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * MAX_PIPELINED
    last = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _ = await exchange(port, [few + last])
    assert answer.count(b"HTTP/1.1 200") == MAX_PIPELINED + 1
