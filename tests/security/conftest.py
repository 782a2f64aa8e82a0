"""A hostile tenant's targets: a recording HTTP server on loopback and V8 pools to attack.

The recorder stands in for anything on the host's network a function must not reach (and,
allowlisted, for the third-party APIs neighbours call): every request it gets is kept, so
a test can assert that nothing arrived, or that a neighbour's request arrived exactly once.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest_asyncio
from aiohttp import web

from services.runtime import EgressConfig, RuntimeConfig, RuntimePool

# A gzip body that inflates to BOMB_INFLATED bytes from about a thousandth of that.
BOMB_INFLATED = 256 * 1024 * 1024


def _gzip_bomb() -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    chunk = b"\0" * (1024 * 1024)
    parts = [squeeze.compress(chunk) for _ in range(BOMB_INFLATED // len(chunk))]
    return b"".join(parts) + squeeze.flush()


@dataclass
class Recorder:
    """A loopback HTTP server that records every request (method, path, body)."""

    host: str = "127.0.0.1"
    port: int = 0
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """Return the base URL by IP literal."""
        return f"http://{self.host}:{self.port}"

    def paths(self) -> list[str]:
        """Return the paths requested so far."""
        return [path for _, path, _ in self.seen]


def _app(rec: Recorder, bomb: bytes) -> web.Application:
    async def record(request: web.Request) -> None:
        rec.seen.append((request.method, request.path_qs, await request.read()))
        rec.arrived.set()

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True})

    async def hold(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.json_response({"held": True})

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(request.query["to"])

    async def gzip_bomb(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * (int(request.query["mb"]) * 1024 * 1024))

    async def trickle(request: web.Request) -> web.StreamResponse:
        """`mb` megabytes, sent evenly over `s` seconds."""
        size, steps = int(request.query["mb"]) * 1024 * 1024, int(request.query["mb"]) * 4
        answer = web.StreamResponse()
        answer.content_length = size
        await answer.prepare(request)
        for _ in range(steps):
            await answer.write(b"t" * (size // steps))
            await asyncio.sleep(float(request.query["s"]) / steps)
        await answer.write_eof()
        return answer

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/hold", hold)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_get("/bomb", gzip_bomb)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/blob", blob)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


@pytest_asyncio.fixture(scope="session")
async def recorder() -> AsyncIterator[Recorder]:
    """Run the recorder on 127.0.0.1 for the session."""
    rec = Recorder()
    bomb = await asyncio.to_thread(_gzip_bomb)
    runner = web.AppRunner(_app(rec, bomb), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    yield rec
    await runner.cleanup()


def config(*, workers: int = 1, allow: tuple[str, ...] = (), **egress: object) -> RuntimeConfig:
    """Return a pool config with the default (strict) egress policy unless told otherwise."""
    return RuntimeConfig(
        workers=workers,
        egress=EgressConfig(allow=allow, **egress),  # type: ignore[arg-type]
        watchdog_interval_s=0.005,
    )


@pytest_asyncio.fixture(scope="session")
async def strict_pool() -> AsyncIterator[RuntimePool]:
    """A pool with the default egress policy: no private address is allowed."""
    async with RuntimePool(config(workers=2)) as pool:
        yield pool


@pytest_asyncio.fixture
async def one_worker() -> AsyncIterator[RuntimePool]:
    """A pool of one worker (plus quarantine) where neighbours share a worker; loopback open."""
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool:
        yield pool
