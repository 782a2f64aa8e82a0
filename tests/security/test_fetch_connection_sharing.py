"""Attacks through the connections a worker's functions share: a function framing its own
request so that a neighbour's next request on the pooled connection becomes part of it (with
its credentials), and a function taking every connection of the worker.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import uvicorn

from services.runtime import Invocation, OutcomeKind, RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.security.conftest import Recorder, config, one_worker, recorder

__all__ = ["one_worker", "recorder"]
SECRET = "sk_live_victim_0123456789abcdef"


class _NotesApi:
    """A third-party API both tenants call, served by uvicorn's h11 parser (which reads
    Transfer-Encoding before Content-Length and keeps the connection open): POST /notes keeps
    its body on the caller's account; everything else answers 200."""

    def __init__(self) -> None:
        self.notes: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/notes":
            self.notes.append(body)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


@pytest_asyncio.fixture
async def notes_api() -> AsyncIterator[tuple[str, _NotesApi]]:
    app = _NotesApi()
    # log_config=None: uvicorn's default config would stop its loggers' records from reaching
    # the root's handlers for the rest of the process (the router's test of that reads them).
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="error", log_config=None)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # as `Server.serve` sets it up
    with socket.create_server(("127.0.0.1", 0)) as sock:
        await server.startup(sockets=[sock])
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
        await server.shutdown(sockets=[sock])


async def test_a_functions_framing_headers_cannot_make_a_neighbours_request_its_body(
    one_worker: RuntimePool, notes_api: tuple[str, _NotesApi]
) -> None:
    """The attacker's body ends its chunked request at once and begins an unfinished POST
    /notes; sent as written beside aiohttp's Content-Length, the server read two requests and
    the next one on the pooled connection, the victim's, became the note's body."""
    url, api = notes_api
    smuggled = "POST /notes HTTP/1.1\\r\\nHost: api\\r\\nContent-Length: 140\\r\\n\\r\\n"
    attacker = f"""async function onTrack() {{
      const r = await fetch('{url}/ping', {{method: 'POST',
        headers: {{'Transfer-Encoding': 'chunked'}}, body: "0\\r\\n\\r\\n{smuggled}"}});
      return r.status
    }}"""
    victim = f"""async function onTrack(event, settings) {{
      const r = await fetch('{url}/v1/contacts', {{
        headers: {{Authorization: 'Bearer ' + settings.apiKey}}}});
      return r.status
    }}"""
    assert value_of(await invoke(one_worker, attacker, key="attacker:1")) == 200
    result = await invoke(
        one_worker, victim, key="victim:1", settings={"apiKey": SECRET}, secrets=(SECRET,)
    )
    assert value_of(result) == 200
    assert api.notes == [], f"a request was smuggled onto the shared connection: {api.notes}"


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Length": "11"},
        {"Transfer-Encoding": "chunked"},
        {"Connection": "close", "Keep-Alive": "timeout=5", "TE": "trailers"},
        {"Content-Length": "3", "Expect": "100-continue", "Upgrade": "h2c"},
    ],
    ids=["content-length", "chunked", "hop-by-hop", "wrong-length"],
)
async def test_a_functions_own_framing_headers_still_send_its_body_intact(
    one_worker: RuntimePool, recorder: Recorder, headers: dict[str, str]
) -> None:
    """Node frames a request by the function's own framing headers: here the body goes out
    framed by its length instead, whole, and the request succeeds."""
    code = f"""async function onTrack() {{
      const r = await fetch('{recorder.url}/framed', {{method: 'POST',
        headers: {headers!r}, body: 'hello world'}});
      return r.status
    }}"""
    before = len(recorder.seen)
    assert value_of(await invoke(one_worker, code)) == 200
    assert ("POST", "/framed", b"hello world") in recorder.seen[before:]


def holding(recorder: Recorder, run: str) -> str:
    """A function whose 40 fetches a server holds for 4 s (`run` marks them)."""
    return f"""async function onTrack() {{
      const held = [];
      for (let i = 0; i < 40; i++) {{
        held.push(fetch('{recorder.url}/hold?s=4&run={run}&i=' + i).catch(() => 0));
      }}
      await Promise.all(held);
    }}"""


NEIGHBOUR = """async function onTrack() {{
  return (await fetch('{url}/ok?who=neighbour')).status
}}"""


@pytest_asyncio.fixture
async def eight_connections() -> AsyncIterator[RuntimePool]:
    """One worker whose functions share 8 connections (one instance may hold 2)."""
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",), max_connections=8)) as pool:
        yield pool


async def test_one_instance_cannot_take_every_connection_of_its_worker(
    eight_connections: RuntimePool, recorder: Recorder
) -> None:
    """A function's 40 fetches held by a server that never answers in time took every
    connection of the worker: a neighbour's fetch then waited until its own deadline."""
    run = uuid.uuid4().hex
    hog = holding(recorder, run)
    neighbour = NEIGHBOUR.format(url=recorder.url)
    hogging = asyncio.create_task(invoke(eight_connections, hog, key="hog:1", timeout_s=6))
    while sum(run in path for path in recorder.paths()) < 2:
        recorder.arrived.clear()
        await recorder.arrived.wait()
    started = time.monotonic()
    result = await invoke(eight_connections, neighbour, key="neighbour:1", timeout_s=3)
    took = time.monotonic() - started
    await hogging
    outcome = result.outcomes[0]
    assert outcome.kind == OutcomeKind.DELIVERED, f"the neighbour starved: {outcome.message}"
    assert took < 2, f"the neighbour waited {took:.1f} s for a connection"


async def test_one_tenants_instances_together_cannot_take_every_connection_of_a_worker(
    eight_connections: RuntimePool, recorder: Recorder
) -> None:
    """Each instance held a quarter of the connections: a tenant's four instances, each
    holding fetches to a server that never answers in time, took them all. A tenant's
    instances now hold a quarter together."""
    run = uuid.uuid4().hex

    def of(tenant: str, instance: str, code: str, timeout_s: float) -> Invocation:
        """A tenant's instance's invocation, keyed as the executor keys it."""
        return Invocation(
            function_key=f"{instance}:ver_1:1",
            code=code,
            events=b'[{"type": "track"}]',
            settings={},
            batch=False,
            timeout_s=timeout_s,
            tenant=tenant,
        )

    hogs = [
        asyncio.create_task(
            eight_connections.run(of("ws_attacker", f"ins_hog{i}", holding(recorder, run), 6))
        )
        for i in range(4)
    ]
    while sum(run in path for path in recorder.paths()) < 2:  # the tenant's quarter, held
        recorder.arrived.clear()
        await recorder.arrived.wait()
    started = time.monotonic()
    result = await eight_connections.run(
        of("ws_victim", "ins_neighbour", NEIGHBOUR.format(url=recorder.url), 3)
    )
    took = time.monotonic() - started
    await asyncio.gather(*hogs)
    outcome = result.outcomes[0]
    assert outcome.kind == OutcomeKind.DELIVERED, f"the neighbour starved: {outcome.message}"
    assert took < 2, f"the neighbour waited {took:.1f} s for a connection"
