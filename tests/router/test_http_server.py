"""The router's HTTP server: each answer in one write, and its connection limit."""

from __future__ import annotations

import asyncio

import aiohttp

from services.router.http_server import _GatheringTransport, serve_http
from tests.eventually import eventually


async def refuse(scope: dict, receive: object, send: object) -> None:
    """The answer to a request over the connection limit (the router's says more)."""
    start = {"type": "http.response.start", "status": 503, "headers": [(b"x-refused", b"1")]}
    await send(start)  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


class Recording(asyncio.Transport):
    """A transport that keeps what it is asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_step_leave_together_and_close_sends_what_is_queued() -> None:
    real = Recording()
    gathering = _GatheringTransport(real, asyncio.get_running_loop())
    gathering.write(b"HTTP/1.1 200 OK\r\n\r\n")
    gathering.write(b"{}")
    assert real.sent == []
    await asyncio.sleep(0)  # the step ends
    assert real.sent == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    gathering.write(b"bye")
    gathering.close()
    assert real.sent[-1] == b"bye" and real.closed
    await asyncio.sleep(0)
    assert len(real.sent) == 2  # nothing more once closed
    assert gathering.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_a_client_that_reads_only_the_status_keeps_its_connection() -> None:
    clients: set[tuple[str, int]] = set()

    async def app(scope: dict, receive: object, send: object) -> None:
        clients.add(scope["client"])
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
        }
        await send(start)  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    server, task, port = await serve_http(
        app, "127.0.0.1", 0, max_connections=10, keepalive_seconds=5, refuse=refuse
    )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            for _ in range(20):
                async with http.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200  # the body is not read
        # The body came with the head, so aiohttp could reuse the connection (when they came
        # apart, it closed about every other one).
        assert len(clients) == 1
    finally:
        server.should_exit = True
        await task


async def test_pipelined_requests_get_their_answers_whole_and_in_order() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        body = scope["path"].encode()
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
        await send(start)  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    server, task, port = await serve_http(
        app, "127.0.0.1", 0, max_connections=10, keepalive_seconds=5, refuse=refuse
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        paths = [f"/r{i}" for i in range(50)]
        writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
        got = []
        for _ in paths:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got.append((await reader.readexactly(length)).decode())
        assert got == paths
        writer.close()
    finally:
        server.should_exit = True
        await task


async def test_as_many_connections_as_the_limit_are_all_served_and_one_more_is_refused() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    server, task, port = await serve_http(
        app, "127.0.0.1", 0, max_connections=10, keepalive_seconds=5, refuse=refuse
    )
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    async def status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        code = head.split()[1]
        assert (code == b"503") == (b"x-refused: 1" in head)  # refused by the given app
        return code

    try:
        # All ten are open before any sends a request (as under a burst of new clients).
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await eventually(
            lambda: len(server.server_state.connections), "ten connections", until=(10).__eq__
        )
        assert await asyncio.gather(*(status(*s) for s in streams)) == [b"200"] * 10
        extra = await asyncio.open_connection("127.0.0.1", port)
        assert await status(*extra) == b"503"
        for _, writer in [*streams, extra]:
            writer.close()
    finally:
        server.should_exit = True
        await task


async def test_a_stop_waits_for_requests_under_way_only_so_long() -> None:
    """uvicorn waited for every connection to close, without end: after 10,000 connections a
    router once never stopped on SIGTERM. A request whose answer never comes is cancelled
    once the stop has waited `shutdown_seconds`."""
    began = asyncio.Event()

    async def never(scope: dict, receive: object, send: object) -> None:
        began.set()
        await asyncio.Event().wait()

    server, task, port = await serve_http(
        never,
        "127.0.0.1",
        0,
        max_connections=10,
        keepalive_seconds=5,
        refuse=refuse,
        shutdown_seconds=1,
    )
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await began.wait()
    server.should_exit = True
    try:
        async with asyncio.timeout(10):
            await task
    finally:
        writer.close()
