"""A runtime pool and a real local HTTP sink (the only stand-in: third-party APIs)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from services.runtime import (
    EgressConfig,
    Invocation,
    InvocationResult,
    RuntimeConfig,
    RuntimePool,
)
from tests.runtime.fake_apis import FakeApis, InterceptingProxy, fake_apis

BIG_BODY = 50 * 1024 * 1024


@dataclass
class Sink:
    """A loopback HTTP server that records what it got."""

    url: str
    received: list[dict[str, object]] = field(default_factory=list)


def _sink_app(sink: Sink) -> web.Application:
    async def record(request: web.Request) -> dict[str, object]:
        body = await request.read()
        seen = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
        sink.received.append(seen)
        return seen

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await record(request))

    async def json_ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True, "n": 1}, headers={"X-Test": "yes"})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="héllo", content_type="text/plain")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if request.query.get("length"):
            resp.content_length = BIG_BODY
        await resp.prepare(request)
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(BIG_BODY // len(chunk)):
                await resp.write(chunk)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text="late")

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)), content_type="application/octet-stream")

    async def gz(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"zipped":true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/json", json_ok)
    app.router.add_get("/text", text)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/binary", binary)
    app.router.add_get("/gzip", gz)
    return app


@pytest_asyncio.fixture(scope="session")
async def sink() -> AsyncIterator[Sink]:
    """Run the sink on 127.0.0.1 for the session."""
    holder = Sink(url="")
    runner = web.AppRunner(_sink_app(holder), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    holder.url = f"http://127.0.0.1:{port}"
    yield holder
    await runner.cleanup()


def pool_config(workers: int = 2, **kwargs: object) -> RuntimeConfig:
    """Return the tests' pool config: loopback allowlisted for the sink."""
    return RuntimeConfig(
        workers=workers,
        egress=EgressConfig(allow=("127.0.0.1/32",)),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(scope="session")
async def pool() -> AsyncIterator[RuntimePool]:
    """A shared pool for tests that do not kill workers."""
    async with RuntimePool(pool_config()) as p:
        yield p


@pytest_asyncio.fixture
async def own_pool() -> AsyncIterator[RuntimePool]:
    """A pool of its own for a test that kills workers or measures latency."""
    async with RuntimePool(pool_config()) as p:
        yield p


_keys = iter(range(1, 10**9))


def new_key() -> str:
    """Return a function key no other test uses (each gets a fresh context)."""
    return f"test-fn:{next(_keys)}"


async def invoke(
    pool: RuntimePool,
    code: str,
    events: Sequence[object] | None = None,
    *,
    settings: dict[str, object] | None = None,
    batch: bool = False,
    timeout_s: float = 5.0,
    key: str | None = None,
    secrets: tuple[str, ...] = (),
    trace_bodies: bool = True,
    tenant: str = "",
) -> InvocationResult:
    """Run `code` on events (default: one track event) and return the result."""
    payload = orjson.dumps(list(events) if events is not None else [{"type": "track"}])
    return await pool.run(
        Invocation(
            function_key=key or new_key(),
            code=code,
            events=payload,
            settings=settings or {},
            batch=batch,
            timeout_s=timeout_s,
            secrets=secrets,
            trace_bodies=trace_bodies,
            tenant=tenant,
        )
    )


def value_of(result: InvocationResult, index: int = 0) -> object:
    """Return the handler's return value for event `index`, failing with the error if any."""
    outcome = result.outcomes[index]
    if outcome.kind != "delivered":
        pytest.fail(f"{outcome.error_type}: {outcome.message}\n{outcome.stack}")
    assert result.values is not None
    return result.values[index]


@pytest_asyncio.fixture(scope="session")
async def fake_api_servers() -> AsyncIterator[tuple[FakeApis, InterceptingProxy]]:
    """Run the fake third-party APIs and the TLS-intercepting proxy for the session."""
    async with fake_apis() as servers:
        yield servers


@pytest_asyncio.fixture
async def apis(fake_api_servers: tuple[FakeApis, InterceptingProxy]) -> FakeApis:
    """The fake third-party APIs, with no request recorded and no response registered."""
    apis, _ = fake_api_servers
    apis.received.clear()
    apis.routes.clear()
    return apis


@pytest_asyncio.fixture(scope="session")
async def sdk_pool(
    fake_api_servers: tuple[FakeApis, InterceptingProxy],
) -> AsyncIterator[RuntimePool]:
    """A pool whose egress goes through the intercepting proxy (it stands in for the APIs)."""
    _, proxy = fake_api_servers
    egress = EgressConfig(
        https_proxy=proxy.url,
        http_proxy=proxy.url,
        ca_bundle=proxy.ca.bundle,
        proxy_checks_names=True,  # the test proxy is the egress point; no DNS here
    )
    async with RuntimePool(RuntimeConfig(workers=2, egress=egress)) as p:
        yield p
