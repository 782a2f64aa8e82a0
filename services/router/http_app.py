"""Segment's HTTP tracking API as a raw ASGI app, served in-process by uvicorn (`http_server`).

POST /v1/track, /identify, /page, /screen, /group, /alias, /batch and /import (batch), and
the short paths of Segment's browser library: /v1/t, /p, /i, /g, /a, /s and /b (batch).
Bodies are JSON, sent as application/json or text/plain (what browsers send without a
preflight). The write key is the basic-auth user name (empty password) or `writeKey` in
the body; a key in the header is checked before the body is read.
GET /v1/projects/{writeKey}/settings serves the settings the browser library loads at start
(see `browser_settings`). Every answer carries CORS headers (see `cors`), and OPTIONS
preflights of these paths are answered with 204.
Answers `200 {"success": true}` only once every pack of the request is acknowledged by
JetStream; errors are JSON `{"success": false, "code": ..., "message": ...}`:
400 bad input, 401 missing/unknown write key, 403 origin not allowed, 404/405 wrong path
or method (404 also for the settings of an unknown write key), 408 slow body (431 a head
past 64 KB and 400 more than 100 requests sent ahead: `http_server`), 415 wrong
content type or encoding, 503 (with Retry-After) before the first configuration snapshot
or while the event store is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

from services.router.browser_settings import request_api_host, settings_document
from services.router.cors import CorsPolicy, Headers, OriginNotAllowedError
from services.router.errors import InvalidRequestError, RouterError, UnsupportedEncodingError
from services.router.normalize import (
    BATCH_MAX_BYTES,
    EVENT_MAX_BYTES,
    decode_body,
    parse_batch,
    parse_single,
)
from services.router.publisher import (
    Ingestor,
    NotReadyError,
    OverBudgetError,
    StorageUnavailableError,
    UnknownWriteKeyError,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_KINDS = {
    b"/v1/track": "track",
    b"/v1/identify": "identify",
    b"/v1/page": "page",
    b"/v1/screen": "screen",
    b"/v1/group": "group",
    b"/v1/alias": "alias",
    b"/v1/batch": "batch",
    b"/v1/import": "batch",
    # Segment's browser library (analytics-next) posts to the first letter of the call.
    b"/v1/t": "track",
    b"/v1/i": "identify",
    b"/v1/p": "page",
    b"/v1/s": "screen",
    b"/v1/g": "group",
    b"/v1/a": "alias",
    b"/v1/b": "batch",
}
_SETTINGS_PATH = re.compile(r"^/v1/projects/([^/]+)/settings/?$")
_SUCCESS = b'{"success":true}'
_JSON_HEADERS = [(b"content-type", b"application/json")]
# The browser library fetches its settings on every page load; a minute of caching spares
# the router most of them, and a rotated key's old settings only point at a 401.
_SETTINGS_CACHE = (b"cache-control", b"public, max-age=60")


class HttpError(Exception):
    """An HTTP error answer: status, machine-readable code, human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or []


class TrackingApp:
    """The ASGI application of the tracking API."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        max_body_bytes: int = BATCH_MAX_BYTES,
        body_timeout: float = 10.0,
        retry_after: int = 5,
        cors: CorsPolicy | None = None,
        public_endpoint: tuple[str, str] | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._retry_after = str(retry_after).encode()
        self._cors = cors or CorsPolicy()
        self._public_endpoint = public_endpoint

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request that came while the router serves all the connections it may."""
        if scope["type"] != "http":
            return
        cors = self._cors.response_headers(dict(scope["headers"]).get(b"origin"))
        message = "the router is serving all the connections it may; retry shortly"
        error = HttpError(503, "unavailable", message, headers=[(b"connection", b"close")])
        await self._send_error(send, error, cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        cors = self._cors.response_headers(headers.get(b"origin"))
        try:
            await self._handle(scope, headers, cors, receive, send)
        except HttpError as error:
            await self._send_error(send, error, cors)

    async def _handle(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        cors: Headers,
        receive: Receive,
        send: Send,
    ) -> None:
        path = scope.get("raw_path") or scope["path"].encode()
        path = path.split(b"?", 1)[0].rstrip(b"/")
        if path == b"/health":
            ok = self._ingestor.ready() and self._ingestor.storage_up()
            if not ok:
                raise HttpError(503, "unavailable", "not ready")
            await _respond(send, 200, _SUCCESS)
            return
        kind = _KINDS.get(path)
        if kind is None:
            found = _SETTINGS_PATH.match(scope["path"])
            if found is None:
                raise HttpError(404, "not_found", f"no endpoint {scope['path']}; use /v1/<call>")
            await self._settings(scope, headers, cors, found.group(1), send)
            return
        method = scope["method"]
        if method == "OPTIONS":
            await self._preflight(headers, send)
            return
        if method != "POST":
            raise HttpError(
                405, "method_not_allowed", "use POST", headers=[(b"allow", b"POST, OPTIONS")]
            )
        self._check_origin(headers)
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if content_type and content_type not in (b"application/json", b"text/plain"):
            raise HttpError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type.decode('latin-1')!r} is not supported; "
                "send JSON as application/json or text/plain",
            )
        if not self._ingestor.ready():
            raise HttpError(503, "unavailable", "the router is starting; retry shortly")
        if not self._ingestor.storage_up():
            raise HttpError(503, "unavailable", "the event store is unreachable; retry shortly")
        header_key = _basic_auth_user(headers.get(b"authorization"))
        if header_key is not None:
            # Refuse an unknown key before reading anything; closing the connection keeps
            # uvicorn from reading (and discarding) the rest of the body after the answer.
            try:
                self._ingestor.source(header_key)
            except UnknownWriteKeyError as exc:
                raise HttpError(
                    401, "unauthorized", exc.message, headers=[(b"connection", b"close")]
                ) from None
            except NotReadyError as exc:
                raise HttpError(503, "unavailable", exc.message) from None
        raw = await self._read_body(receive)
        cap = BATCH_MAX_BYTES if kind == "batch" else EVENT_MAX_BYTES
        now = datetime.now(UTC)
        try:
            body = decode_body(raw, _text(headers.get(b"content-encoding")), cap)
            parsed = parse_batch(body, now) if kind == "batch" else parse_single(kind, body, now)
        except UnsupportedEncodingError as exc:
            raise HttpError(415, "unsupported_encoding", exc.message) from None
        except InvalidRequestError as exc:
            extra = {k: v for k, v in (("index", exc.index), ("field", exc.field)) if v is not None}
            raise HttpError(400, "invalid_request", exc.message, extra=extra) from None
        except RouterError as exc:
            raise HttpError(400, "invalid_request", exc.message) from None
        write_key = header_key or parsed.write_key
        try:
            await self._ingestor.ingest(
                write_key,
                parsed.events,
                traceparent=_text(headers.get(b"traceparent")),
                tracestate=_text(headers.get(b"tracestate")),
                sender=tuple(scope.get("client") or ()) or None,  # (host, port) of the peer
            )
        except UnknownWriteKeyError as exc:
            raise HttpError(401, "unauthorized", exc.message) from None
        except (NotReadyError, StorageUnavailableError) as exc:
            raise HttpError(503, "unavailable", exc.message) from None
        except OverBudgetError as exc:
            wait = str(math.ceil(exc.retry_after)).encode()
            raise HttpError(
                429, "too_many_requests", exc.message, headers=[(b"retry-after", wait)]
            ) from None
        await _respond(send, 200, _SUCCESS, cors)

    async def _preflight(self, headers: dict[bytes, bytes], send: Send) -> None:
        """Answer a CORS preflight of a tracking or settings path with 204."""
        self._check_origin(headers)
        answer = self._cors.preflight_headers(
            headers.get(b"origin"),
            headers.get(b"access-control-request-headers"),
            headers.get(b"access-control-request-private-network", b"").lower() == b"true",
        )
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b""})

    async def _settings(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        cors: Headers,
        write_key: str,
        send: Send,
    ) -> None:
        """Serve the browser library's settings for a known write key."""
        method = scope["method"]
        if method == "OPTIONS":
            await self._preflight(headers, send)
            return
        if method != "GET":
            raise HttpError(
                405, "method_not_allowed", "use GET", headers=[(b"allow", b"GET, OPTIONS")]
            )
        self._check_origin(headers)
        try:
            self._ingestor.source(write_key)
        except NotReadyError as exc:
            raise HttpError(503, "unavailable", exc.message) from None
        except UnknownWriteKeyError:
            raise HttpError(
                404,
                "not_found",
                "no source has this write key; copy the source's current write key "
                "from `eventfn sources list`",
            ) from None
        answer = [*cors, _SETTINGS_CACHE]
        endpoint = self._public_endpoint
        if endpoint is None:
            endpoint = request_api_host(headers.get(b"host"), scope.get("scheme", "http"))
            # Told where to send by the Host it was asked on, and how (the scheme a local proxy
            # forwarded): a shared cache must not hand one Host's answer to another's requests
            # (a forged Host would then redirect events), nor an http one to https pages.
            answer.append((b"vary", b"Host, X-Forwarded-Proto"))
        body = settings_document(write_key, endpoint)
        await _respond(send, 200, body, answer)

    def _check_origin(self, headers: dict[bytes, bytes]) -> None:
        """Refuse a browser request from an origin the CORS setting does not list."""
        try:
            self._cors.check(headers.get(b"origin"))
        except OriginNotAllowedError as exc:
            raise HttpError(403, "origin_not_allowed", str(exc)) from None

    async def _read_body(self, receive: Receive) -> bytes:
        """Read the whole body within the time limit, refusing one over the size cap."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise HttpError(400, "disconnected", "client went away")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self._max_body:
                        raise HttpError(
                            400,
                            "invalid_request",
                            f"body is larger than the {self._max_body // 1024} KB limit",
                        )
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise HttpError(408, "timeout", "the request body was not sent in time") from None
        return b"".join(chunks)

    async def _send_error(self, send: Send, error: HttpError, cors: Headers) -> None:
        self._ingestor.count_rejected(error.code)
        document = {"success": False, "code": error.code, "message": error.message, **error.extra}
        extra = [*cors, *error.headers]
        if error.status == 503:
            extra.append((b"retry-after", self._retry_after))
        with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
            await _respond(send, error.status, orjson.dumps(document), extra)


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _basic_auth_user(value: bytes | None) -> str | None:
    """Return the user name of a basic-auth header (the write key), or None."""
    if not value:
        return None
    scheme, _, encoded = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None
