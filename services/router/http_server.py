"""uvicorn (httptools) as the router runs it: in-process, on the service's event loop, with
each response leaving in one write.

uvicorn writes a response's status line and headers, then its body, each with a write of
its own: two sends for a small answer, and a client that reads the head before the body
has arrived may give up the connection (aiohttp closes one whose answer it has not read to
the end). `_OneWriteProtocol` hands uvicorn a transport that gathers what is written in one
step of the event loop and sends it at the end of that step. A request over the connection
limit is answered by the caller's `refuse` app instead of uvicorn's plain-text 503, and
logged at most every ten seconds with a count (uvicorn logs each one).

Each request head (request line and headers) has a deadline: from the moment the connection
opens, and for a further request from its first byte. uvicorn has none: it starts no timer
on a new connection, and its keep-alive timer stops at the first byte after an answer; so
connections that send nothing, or trickle a head, would hold the connection limit for ever
and every other client would be refused. A connection past the deadline is closed, with a
408 if a request had begun. A head past MAX_HEAD_BYTES gets 431, more than MAX_PIPELINED
requests sent ahead of their answers 400, and the connection is closed (uvicorn bounds
neither).
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
# As long as a request body may take by default (EVENTFN_ROUTER_HTTP_BODY_TIMEOUT_SECONDS).
HEADER_TIMEOUT_SECONDS = 10.0
# At most this long a stop waits for requests under way (publishes time out at 5 s).
SHUTDOWN_SECONDS = 10
_UVICORN_REFUSAL = "Exceeded concurrency limit."
# A request head's bytes past those of the read it began in (httptools and uvicorn set no
# limit, and grow a header value or URL by concatenation: 83 MB of one header took 10 s of the
# loop, 120 MB of small ones 1.9 GB of memory).
MAX_HEAD_BYTES = 64 * 1024
# Requests a connection may have waiting behind the one being answered (uvicorn queues every
# pipelined head of a read, and reads on after each answer: 12 MB of them took 1.3 GB).
MAX_PIPELINED = 100
# Chunks of a chunked body past which they must average MIN_CHUNK_BYTES (each is a Python
# call: 500 KB in one-byte chunks is 500,000 of them, ≈ 42,000 a read; a streaming client
# writing an event a chunk sends a few thousand). A body of known length comes in a piece per
# read, however slowly it is sent: not counted.
MAX_BODY_PIECES = 4096
MIN_CHUNK_BYTES = 64


def _answer(status: bytes, code: bytes, message: bytes) -> bytes:
    """Return the router's error document as a whole answer that closes the connection;
    without CORS headers (the Origin header may be one of those that never came)."""
    body = b'{"success":false,"code":"%s","message":"%s"}' % (code, message)
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, len(body), body)
    )


_HEAD_TIMEOUT_ANSWER = _answer(
    b"408 Request Timeout", b"timeout", b"the request headers were not sent in time"
)
_HEAD_TOO_LARGE_ANSWER = _answer(
    b"431 Request Header Fields Too Large",
    b"header_too_large",
    b"the request line and headers are larger than %d KB" % (MAX_HEAD_BYTES // 1024),
)
_TOO_MANY_PIPELINED_ANSWER = _answer(
    b"400 Bad Request",
    b"too_many_pipelined",
    b"more than %d requests sent ahead on one connection; wait for the answers" % MAX_PIPELINED,
)
_TOO_MANY_PIECES_ANSWER = _answer(
    b"400 Bad Request",
    b"invalid_request",
    b"the body came in more than %d chunks of fewer than %d bytes on average; send larger "
    b"chunks" % (MAX_BODY_PIECES, MIN_CHUNK_BYTES),
)


class _Refused(Exception):
    """Stops parsing a connection that has been answered and closed (httptools ends the
    read; uvicorn's own 400 then goes to a closed transport)."""


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
    the connection limit go to `refuse`, and a connection whose request head is not complete
    `header_timeout` seconds after it opened (or after the first byte of a further request)
    is closed."""

    def __init__(
        self,
        *args: Any,
        refuse: App,
        refusals: _Refusals,
        header_timeout: float,
        on_header_timeout: Callable[[], None] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._refuse = refuse
        self._refusals = refusals
        self._header_timeout = header_timeout
        self._on_header_timeout = on_header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request has begun and its headers are not all here
        self._head_bytes = 0  # of the unfinished head, after the read it began in
        self._body_pieces = 0  # of the request being read, if chunked
        self._body_bytes = 0  # of those pieces
        self._chunked = False  # the request being read has a chunked body

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is service_unavailable:
            self._refusals.note(len(self.connections))
            app = self._refuse
        super()._start_asgi_task(cycle, app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathering = _GatheringTransport(transport, asyncio.get_running_loop())
        super().connection_made(gathering)  # type: ignore[arg-type]
        # uvicorn starts no timer here: a connection that never sends would stay open.
        self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        continuing = self._in_head
        super().data_received(data)
        if self._in_head:  # a head still unfinished: count what came for it
            self._head_bytes = self._head_bytes + len(data) if continuing else 0
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_connection(_HEAD_TOO_LARGE_ANSWER)
                return
        # uvicorn stops its keep-alive timer at the first byte after an answer and starts it
        # again only with the next answer: bytes that leave a head unfinished (a trickled
        # head, blank lines, the rest of a body answered early) must not keep the connection.
        # A head that arrives whole (the usual case) costs no timer.
        if self._head_timer is None and (
            self._in_head or self.cycle is None or self.cycle.response_complete
        ):
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._body_pieces = self._body_bytes = 0
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            self._body_pieces += 1
            self._body_bytes += len(body)
        if (
            self._body_pieces > MAX_BODY_PIECES
            and self._body_bytes < MIN_CHUNK_BYTES * self._body_pieces
        ):
            self._refuse_connection(_TOO_MANY_PIECES_ANSWER)
            raise _Refused
        # uvicorn adds each piece to a bytes object, copying what came before each time:
        # quadratic over the thousands of small chunks one read may hold.
        cycle = self.cycle
        if type(cycle.body) is bytes:
            cycle.body = bytearray(cycle.body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._chunked = any(
            name == b"transfer-encoding" and b"chunked" in value.lower()
            for name, value in self.headers
        )
        if len(self.pipeline) > MAX_PIPELINED:
            self._refuse_connection(_TOO_MANY_PIPELINED_ANSWER)
            raise _Refused  # stops this read's parsing: nothing more is queued

    def _refuse_connection(self, answer: bytes) -> None:
        """Answer a connection that went past a limit, and close it."""
        self.pipeline.clear()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head trickles behind an answer on its way: close after that answer
            # (it is bounded by the app's own timeouts).
            self.cycle.keep_alive = False
            return
        if self._in_head:
            if self._on_header_timeout is not None:
                self._on_header_timeout()
            self.transport.write(_HEAD_TIMEOUT_ANSWER)
        self.transport.close()


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
    header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS,
    on_header_timeout: Callable[[], None] | None = None,
    shutdown_seconds: int = SHUTDOWN_SECONDS,
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Start uvicorn (httptools) for the app on the running loop; return it and its port.

    `refuse` answers the requests that come while `max_connections` others are open. A
    connection is closed when a request head is not complete `header_timeout_seconds` after
    the connection opened or the request's first byte came; `on_header_timeout` is called
    for each begun request so ended (answered 408). Stopping waits `shutdown_seconds` at most
    for requests under way, then cancels them (their clients retry: nothing unanswered was
    acknowledged)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=functools.partial(  # type: ignore[arg-type]
            _OneWriteProtocol,
            refuse=refuse,
            refusals=_Refusals(max_connections),
            header_timeout=header_timeout_seconds,
            on_header_timeout=on_header_timeout,
        ),
        lifespan="off",
        access_log=False,
        # Its records go to the service's handler (its format, JSON or escaped text): its own
        # logging config printed them raw, a client's text in them unescaped.
        log_config=None,
        log_level="warning",
        # uvicorn refuses a request once the open connections, its own included, reach the
        # limit: max_connections + 1 serves every request of max_connections connections.
        limit_concurrency=max_connections + 1,
        timeout_keep_alive=keepalive_seconds,
        # uvicorn waits for every connection to close, without end by default: after a load
        # of 10,000 connections a router once never stopped on SIGTERM.
        timeout_graceful_shutdown=shutdown_seconds,
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
