"""Perform a round of function fetches with one keep-alive aiohttp client (node-fetch v2 rules).

Every hop is checked against the egress policy: names through a resolver that refuses
forbidden addresses (so the checked address is the one connected to), IP literals directly.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .config import EgressConfig
from .egress import EgressPolicy, parse_ip, proxy_for

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
TRACE_BODY_CAP = 8 * 1024
_CHUNK = 64 * 1024


class EgressRefused(OSError):
    """A destination is refused by the egress policy."""


class FetchFailed(Exception):
    """A fetch failed the way node-fetch reports it (FetchError type / code)."""

    def __init__(self, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class PolicyResolver(AbstractResolver):
    """Resolve names and drop addresses the policy refuses; fail if none is left."""

    def __init__(self, policy: EgressPolicy, exempt: frozenset[str]) -> None:
        self._policy = policy
        self._exempt = exempt  # proxy hosts configured by the operator
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host`, keeping only allowed addresses."""
        found = await self._inner.resolve(host, port, family)
        if host.lower() in self._exempt:
            return found
        allowed: list[ResolveResult] = []
        reason = None
        for entry in found:
            ip = parse_ip(entry["host"])
            why = None if ip is None else self._policy.refusal(ip, host)
            if why is None:
                allowed.append(entry)
            else:
                reason = why
        if not allowed:
            raise EgressRefused(errno.EACCES, reason or f"{host} has no allowed address")
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def _ssl_context(config: EgressConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if config.ca_bundle:
        ctx.load_verify_locations(cafile=config.ca_bundle)
    return ctx


def _decode_body(data: bytes) -> dict[str, str]:
    try:
        return {"t": "s", "v": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"t": "b", "v": base64.b64encode(data).decode("ascii")}


def _body_bytes(body: Mapping[str, str] | None) -> bytes | None:
    if body is None:
        return None
    if body["t"] == "s":
        return body["v"].encode("utf-8")
    return base64.b64decode(body["v"])


def _trace_text(data: bytes | None) -> tuple[str | None, bool]:
    if data is None:
        return None, False
    cut = data[:TRACE_BODY_CAP]
    return cut.decode("utf-8", errors="replace"), len(data) > TRACE_BODY_CAP


def _system_error(url: str, exc: BaseException) -> FetchFailed:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, EgressRefused):
        return FetchFailed(
            f"request to {url} failed, reason: {os_error.strerror}", "system", "EGRESS_REFUSED"
        )
    code = "ECONNRESET"
    reason = str(exc) or type(exc).__name__
    if isinstance(os_error, OSError) and os_error.errno is not None:
        code = errno.errorcode.get(os_error.errno, code)
        parts = urlsplit(url)
        reason = f"connect {code} {parts.hostname}:{parts.port or _default_port(parts.scheme)}"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        code = "ENOTFOUND"
        reason = f"getaddrinfo ENOTFOUND {urlsplit(url).hostname}"
    return FetchFailed(f"request to {url} failed, reason: {reason}", "system", code)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class HostFetcher:
    """Performs fetch rounds for every function of a worker, on one connection pool."""

    def __init__(self, config: EgressConfig) -> None:
        self._config = config
        self._policy = EgressPolicy.from_config(config)
        self._session: aiohttp.ClientSession | None = None
        self._proxied = bool(config.http_proxy or config.https_proxy)
        # netloc -> refusal for IP-literal hosts (None: allowed or a name, checked on resolve)
        self._literal_refusals: dict[str, str | None] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            exempt = frozenset(
                (urlsplit(p).hostname or "").lower()
                for p in (self._config.http_proxy, self._config.https_proxy)
                if p
            )
            connector = aiohttp.TCPConnector(
                limit=self._config.max_connections,
                resolver=PolicyResolver(self._policy, exempt),
                ssl=_ssl_context(self._config),
                ttl_dns_cache=10,
            )
            # No cookie jar: cookies must never travel between functions.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def perform_round(
        self, requests: list[dict[str, Any]], deadline: float, keep_bodies: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """Perform requests concurrently; return (results for JS, traces, deadline reached)."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._one(r, deadline, keep_bodies)) for r in requests]
        # One timer for the whole round (the invocation's deadline), not one per request.
        _, late = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.001))
        for task in late:
            task.cancel()
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for req, task in zip(requests, tasks, strict=True):
            if task in late:
                url = str(req["url"])
                exc = FetchFailed(f"network timeout at: {url}", "request-timeout")
                trace = {
                    "method": req["method"],
                    "url": url,
                    "status": None,
                    "error": str(exc),
                    "duration_ms": 0.0,
                }
                out.append(({"id": req["id"], "error": _error(exc)}, trace))
            else:
                out.append(task.result())
        return [o[0] for o in out], [o[1] for o in out], bool(late)

    def _check_literal(self, url: str) -> None:
        netloc = url.split("/", 3)[2] if url.count("/") >= 2 else url
        why = self._literal_refusals.get(netloc, False)
        if why is False:
            host = urlsplit(url).hostname or ""
            ip = parse_ip(host)
            why = None if ip is None else self._policy.refusal(ip, host)
            if len(self._literal_refusals) > 10_000:
                self._literal_refusals.clear()
            self._literal_refusals[netloc] = why
        if why is not None:
            raise FetchFailed(f"request to {url} failed, reason: {why}", "system", "EGRESS_REFUSED")

    async def _one(
        self, req: dict[str, Any], deadline: float, keep_bodies: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        started = time.monotonic()
        url = str(req["url"])
        method = str(req["method"])
        body = _body_bytes(req.get("body"))
        trace: dict[str, Any] = {"method": method, "url": url, "status": None, "error": None}
        if keep_bodies:
            trace["request_headers"] = [list(h) for h in req["headers"]]
            trace["request_body"], _ = _trace_text(body)
        try:
            if req.get("timeout"):
                budget = min(deadline - started, float(req["timeout"]) / 1000)
                async with asyncio.timeout(max(budget, 0.001)):
                    result, data = await self._follow(req, url, method, body)
            else:
                result, data = await self._follow(req, url, method, body)
        except FetchFailed as exc:
            result, data = {"id": req["id"], "error": _error(exc)}, None
        except TimeoutError:
            exc = FetchFailed(f"network timeout at: {url}", "request-timeout")
            result, data = {"id": req["id"], "error": _error(exc)}, None
        trace["duration_ms"] = (time.monotonic() - started) * 1000
        if "error" in result:
            trace["error"] = result["error"]["message"]
        else:
            trace["status"] = result["status"]
            trace["url"] = result["url"]
            if keep_bodies:
                trace["response_headers"] = result["headers"]
                trace["response_body"], trace["body_truncated"] = _trace_text(data)
        return result, trace

    async def _follow(
        self, req: dict[str, Any], url: str, method: str, body: bytes | None
    ) -> tuple[dict[str, Any], bytes]:
        headers = [(str(k), str(v)) for k, v in req["headers"]]
        limit = self._config.max_response_bytes
        if req.get("size"):
            limit = min(limit, int(req["size"]))
        max_hops = int(req.get("follow", 20))
        max_hops = min(max_hops, self._config.max_redirects)
        hops = 0
        while True:
            self._check_literal(url)
            try:
                async with self._client().request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    # node-fetch sends no Content-Type for a Buffer body; aiohttp would add one.
                    skip_auto_headers=("Content-Type",),
                    proxy=proxy_for(url, self._config) if self._proxied else None,
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECT_CODES and location is not None:
                        target = urljoin(url, location)
                        mode = req.get("redirect", "follow")
                        if mode == "error":
                            raise FetchFailed(
                                f"uri requested responds with a redirect, redirect mode is set "
                                f"to error: {url}",
                                "no-redirect",
                            )
                        if mode == "follow":
                            if hops >= max_hops:
                                raise FetchFailed(
                                    f"maximum redirect reached at: {url}", "max-redirect"
                                )
                            if urlsplit(target).scheme not in ("http", "https"):
                                raise FetchFailed(
                                    f"redirect to {target} is not http(s)", "system", "EPROTO"
                                )
                            if resp.status == 303 or (
                                resp.status in (301, 302) and method == "POST"
                            ):
                                method, body = "GET", None
                                headers = [h for h in headers if h[0].lower() != "content-type"]
                            url = target
                            hops += 1
                            continue
                    data = await _read_capped(resp, url, limit, self._config)
                    pairs = [[k, v] for k, v in resp.headers.items()]
                    if location is not None and req.get("redirect") == "manual":
                        pairs = [
                            [k, urljoin(url, v) if k.lower() == "location" else v] for k, v in pairs
                        ]
                    return {
                        "id": req["id"],
                        "url": url,
                        "status": resp.status,
                        "statusText": resp.reason or "",
                        "headers": pairs,
                        "redirected": hops > 0,
                        "redirects": hops,
                        "body": _decode_body(data),
                    }, data
            except (FetchFailed, TimeoutError):
                raise
            except aiohttp.ClientError as exc:
                raise _system_error(url, exc) from exc
            except OSError as exc:
                raise _system_error(url, exc) from exc


def _error(exc: FetchFailed) -> dict[str, Any]:
    return {"message": str(exc), "type": exc.kind, "code": exc.code}


async def _read_capped(
    resp: aiohttp.ClientResponse, url: str, limit: int, config: EgressConfig
) -> bytes:
    def too_big() -> FetchFailed:
        if limit < config.max_response_bytes:
            return FetchFailed(f"content size at {url} over limit: {limit}", "max-size")
        return FetchFailed(
            f"response body at {url} is larger than eventfn's limit of "
            f"{config.max_response_bytes // (1024 * 1024)} MB",
            "max-size",
        )

    if resp.content_length is not None:
        if resp.content_length > limit:
            raise too_big()
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_big()
        chunks.append(chunk)
    return b"".join(chunks)
