"""uvicorn (httptools) as the router runs it: in-process, on the service's event loop, with
each response leaving in one write.

uvicorn writes a response's status line and headers, then its body, each with a write of
its own: two sends for a small answer, and a client that reads the head before the body
has arrived may give up the connection (aiohttp closes one whose answer it has not read to
the end). `_OneWriteProtocol` hands uvicorn a transport that gathers what is written in one
step of the event loop and sends it at the end of that step. A request over the connection
limit is answered by the caller's `refuse` app instead of uvicorn's plain-text 503, and
logged at most every ten seconds with a count (uvicorn logs each one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

App = Callable[[Any, Any, Any], Awaitable[None]]

log = logging.getLogger(__name__)
REFUSALS_LOGGED_EVERY = 10.0  # seconds
_UVICORN_REFUSAL = "Exceeded concurrency limit."


class _Refusals:
    """Requests refused over the connection limit, logged at most every
    REFUSALS_LOGGED_EVERY seconds with how many there were."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0
        self._next = 0.0

    def note(self, open_connections: int) -> None:
        """Count one refusal; log the count when the last log is old enough."""
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning(
            "HTTP requests refused with 503, %d since the last such line (one at most every "
            "%.0f s): %d connections open, the limit is %d (EVENTFN_ROUTER_HTTP_MAX_CONNECTIONS)",
            self._count,
            REFUSALS_LOGGED_EVERY,
            open_connections,
            self._limit,
        )
        self._count = 0
        self._next = now + REFUSALS_LOGGED_EVERY


def _not_uvicorns_refusal(record: logging.LogRecord) -> bool:
    """Drop uvicorn's warning per refused request (`_Refusals` logs them with a count)."""
    return record.msg != _UVICORN_REFUSAL


class _GatheringTransport:
    """A transport whose writes in one event-loop step leave together at the end of it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue data; the step's writes go out in one send once it ends."""
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Send what is queued, then close."""
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `_GatheringTransport`; requests over
    the connection limit go to `refuse`."""

    def __init__(self, *args: Any, refuse: App, refusals: _Refusals, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refuse = refuse
        self._refusals = refusals

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is service_unavailable:
            self._refusals.note(len(self.connections))
            app = self._refuse
        super()._start_asgi_task(cycle, app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathering = _GatheringTransport(transport, asyncio.get_running_loop())
        super().connection_made(gathering)  # type: ignore[arg-type]


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the service's main."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def serve_http(
    app: App,
    host: str,
    port: int,
    *,
    max_connections: int,
    keepalive_seconds: int,
    refuse: App,
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Start uvicorn (httptools) for the app on the running loop; return it and its port.

    `refuse` answers the requests that come while `max_connections` others are open."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=functools.partial(  # type: ignore[arg-type]
            _OneWriteProtocol, refuse=refuse, refusals=_Refusals(max_connections)
        ),
        lifespan="off",
        access_log=False,
        log_level="warning",
        # uvicorn refuses a request once the open connections, its own included, reach the
        # limit: max_connections + 1 serves every request of max_connections connections.
        limit_concurrency=max_connections + 1,
        timeout_keep_alive=keepalive_seconds,
        backlog=4096,
    )
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _not_uvicorns_refusal not in uvicorn_log.filters:
        uvicorn_log.addFilter(_not_uvicorns_refusal)
    server = _InProcessServer(config)
    # Bind here: uvicorn would sys.exit() on a taken port, which no caller can handle.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} for HTTP ({error.strerror}); "
            "set EVENTFN_ROUTER_HTTP_LISTEN to a free address"
        ) from None
    task = asyncio.create_task(server.serve(sockets=[sock]), name="router-http")
    while not server.started:
        if task.done():
            task.result()  # raises why the server could not start
            raise OSError(f"HTTP server on {host}:{port} stopped during start-up")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, task, bound
