"""Slowloris on the router's public HTTP port: connections that send nothing, or trickle a
request head, blank lines or the rest of a body already answered, need no write key; uvicorn
starts no timer on a new connection, stops its keep-alive timer at the first byte after an
answer and reads heads without a deadline, so EVENTFN_ROUTER_HTTP_MAX_CONNECTIONS of them
kept every tenant's requests answered 503 for as long as they stayed open. Each request head
now has a deadline (EVENTFN_ROUTER_HTTP_HEADER_TIMEOUT_SECONDS), from the connection's opening
or the request's first byte; past it the connection is closed, with a 408 if a request began.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.router.http_server import App, serve_http

LIMIT = 10  # EVENTFN_ROUTER_HTTP_MAX_CONNECTIONS
KEEPALIVE = 1  # seconds (the router's default is 5)
HEADER_TIMEOUT = 1.0  # seconds (the router's default is 10)
TRICKLE = 0.1  # seconds between two of a slow client's writes
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def serving(app: App, **options: Any) -> AsyncIterator[int]:
    """Serve `app` as the router does, with this module's small limits; yield the port."""
    server, task, port = await serve_http(
        app,
        "127.0.0.1",
        0,
        max_connections=LIMIT,
        keepalive_seconds=KEEPALIVE,
        refuse=refuse,
        header_timeout_seconds=HEADER_TIMEOUT,
        **options,
    )
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def answer(scope: dict, receive: object, send: object) -> None:
    """Answer 200 at once, without reading the body (as the router answers a bad key)."""
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    await send(start)  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


async def read_body_then_answer(scope: dict, receive: object, send: object) -> None:
    """Read the whole body, then answer 200."""
    while (await receive()).get("more_body", False):  # type: ignore[operator]
        pass
    await answer(scope, receive, send)


async def refuse(scope: dict, receive: object, send: object) -> None:
    """The answer to a request over the connection limit (the router's says more)."""
    start = {"type": "http.response.start", "status": 503, "headers": [(b"connection", b"close")]}
    await send(start)  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send a GET and return the answer's head (the apps here answer without a body)."""
    writer.write(GET)
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def honest_status(port: int) -> bytes:
    """Return the status code one request on a new connection gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await exchange(reader, writer)).split()[1]
    finally:
        writer.close()


async def until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes
) -> bytes:
    """Write `trickle` every TRICKLE seconds until the server closes; return what it sent."""
    got = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(1024), TRICKLE)
        except TimeoutError:
            writer.write(trickle)
            continue
        except ConnectionResetError:  # it closed while a trickled byte was unread
            return got
        if not chunk:
            return got
        got += chunk


async def silent(streams: Streams) -> bytes:
    """Send nothing at all."""
    return b""


async def trickled_head(streams: Streams) -> bytes:
    """Begin a request; its headers will come one at a time."""
    streams[1].write(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
    return b"X-A: b\r\n"


async def blank_lines_after_an_answer(streams: Streams) -> bytes:
    """Get one answer; then blank lines, which begin no request (and stop uvicorn's keep-alive
    timer)."""
    assert (await exchange(*streams)).startswith(b"HTTP/1.1 200")
    return b"\r\n"


async def body_after_an_answer(streams: Streams) -> bytes:
    """Get an answer before sending the body, then send the body a byte at a time."""
    streams[1].write(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    assert (await asyncio.wait_for(streams[0].readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200"
    )
    return b"x"


@pytest.mark.parametrize(
    ("begin", "answered"),
    [
        (silent, b""),
        (trickled_head, b"HTTP/1.1 408"),
        (blank_lines_after_an_answer, b""),
        (body_after_an_answer, b""),
    ],
    ids=["silent", "trickling-headers", "blank-lines-after-an-answer", "body-after-an-answer"],
)
async def test_slow_connections_are_closed_and_do_not_lock_out_others(
    begin: Callable[[Streams], Awaitable[bytes]], answered: bytes
) -> None:
    timeouts: list[None] = []
    async with serving(answer, on_header_timeout=lambda: timeouts.append(None)) as port:
        hostile = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT)]
        try:
            trickles = [await begin(streams) for streams in hostile]
            assert await honest_status(port) == b"503", "the hostile connections fill the limit"
            # Each is closed once its deadline passes, however long it keeps trickling (the
            # trickle outlasts the keep-alive timeout, which each byte would restart).
            closed = await asyncio.wait_for(
                asyncio.gather(
                    *(until_closed(*s, t) for s, t in zip(hostile, trickles, strict=True))
                ),
                HEADER_TIMEOUT + KEEPALIVE + 5,
            )
            assert all(got.startswith(answered) for got in closed), closed
            if answered:
                assert b'"code":"timeout"' in closed[0] and b"connection: close" in closed[0]
            assert len(timeouts) == (LIMIT if answered else 0), "each 408 is counted"
            assert await honest_status(port) == b"200"
        finally:
            for _, writer in hostile:
                writer.close()


async def test_each_request_on_a_connection_has_its_own_deadline() -> None:
    async with serving(answer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # Three heads, each taking half the deadline: the connection lives longer than one
            # deadline, and every head is in time.
            for _ in range(3):
                writer.write(GET[:10])
                await asyncio.sleep(HEADER_TIMEOUT / 2)
                writer.write(GET[10:])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200"), head
        finally:
            writer.close()


async def test_the_deadline_ends_with_the_headers() -> None:
    """A body slower than the head's deadline is the app's to judge (the router's has its own
    timeout)."""
    async with serving(read_body_then_answer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{")
            await asyncio.sleep(HEADER_TIMEOUT * 1.5)
            writer.write(b"}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
        finally:
            writer.close()


async def test_a_head_trickling_behind_an_answer_closes_the_connection_after_it() -> None:
    release = asyncio.Event()

    async def held(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await answer(scope, receive, send)

    async with serving(held) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(GET + b"GET /next HTTP/1.1\r\n")  # the second head never ends
            await asyncio.sleep(HEADER_TIMEOUT * 1.5)
            release.set()
            got = await asyncio.wait_for(reader.read(), 5)
            assert got.startswith(b"HTTP/1.1 200") and b"connection: close" in got, got
        finally:
            writer.close()
