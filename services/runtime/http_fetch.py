"""Perform a round of function fetches with one keep-alive aiohttp client (node-fetch v2 rules).

The egress decision is made in the connector, on exactly the addresses it connects to: IP
literals and resolved names alike, after the client's own host normalisation (IDNA, Unicode
digits and dots), on every redirect hop. With a proxy, the target's addresses are checked
before the request is handed to the proxy. Response bodies are counted after decompression
while they stream, and every invocation has a budget for the response bytes it holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import errno
import socket
import ssl
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from .config import EgressConfig
from .egress import EgressPolicy, parse_ip, proxy_for
from .redact import CUT_MARGIN
from .report import FetchRequest

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Characters of a body a trace keeps, cut once redacted (worker.py): it comes this many bytes
# long, CUT_MARGIN characters more at four bytes a character, so no cut splits a secret.
TRACE_BODY_CAP = 8 * 1024
_TRACE_BODY_BYTES = 4 * (TRACE_BODY_CAP + CUT_MARGIN)
# What node-fetch ≥ 2.6.7 (CVE-2022-0235) drops on a redirect to another host or protocol, and
# Proxy-Authorization, which undici drops too: a function may set it for a proxy of its own.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "www-authenticate", "cookie", "cookie2", "proxy-authorization"}
)
# How a request is framed on its connection is the client's to say, never the function's: a
# function's own Transfer-Encoding or Content-Length, beside the Content-Length aiohttp writes,
# made one request read as two by some servers, the second one swallowing the next request on
# the pooled connection (another function's, its credentials included). Node frames a request
# by these headers; here they are dropped and the body framed by its length, which every server
# reads the same way.
FRAMING_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "expect",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 64 * 1024
# True while the connector opens a connection to the operator's proxy (exempt from the policy).
_TO_PROXY: contextvars.ContextVar[bool] = contextvars.ContextVar("to_proxy", default=False)


class EgressRefused(OSError):
    """A destination is refused by the egress policy."""


class FetchFailed(Exception):
    """A fetch failed the way node-fetch reports it (FetchError type / code)."""

    def __init__(self, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class ResponseBudget:
    """The response bytes one fetch round may hold, counted as the bodies stream in.

    A round's responses are held together and copied into the function's context in one
    crossing (the script that carries them, the strings parsed from it, what the function
    makes of them), so a round may hold a quarter of the invocation's memory limit; past it,
    fetches fail instead of the whole invocation.
    """

    def __init__(self, memory_limit: int, received: Callable[[int], None] | None = None) -> None:
        self.limit = memory_limit // 4
        self._memory_limit = memory_limit
        self._received = received  # told of each body's bytes as they come
        self.used = 0

    def release(self, size: int) -> None:
        """Give back the bytes of a body that will not be handed to the function."""
        self.used -= size

    def take(self, size: int, url: str) -> None:
        """Count `size` more bytes; fail the fetch once the round's share is passed."""
        self.used += size
        if self._received is not None:
            self._received(size)
        if self.used > self.limit:
            raise FetchFailed(
                f"response body at {url} would take the responses held at once past "
                f"{self.limit // (1024 * 1024)} MB, a quarter of the function's memory limit "
                f"of {self._memory_limit // (1024 * 1024)} MB",
                "max-size",
            )


class PolicyConnector(aiohttp.TCPConnector):
    """A TCP connector that connects only to addresses the egress policy allows."""

    def __init__(self, policy: EgressPolicy, *, check_proxied: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy = policy
        self._check_proxied = check_proxied

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        found = await super()._resolve_host(host, port, traces)  # type: ignore[arg-type]
        if _TO_PROXY.get():
            return found  # the operator's own proxy
        return self._allowed(host, found)

    def _allowed(self, host: str, found: list[ResolveResult]) -> list[ResolveResult]:
        allowed: list[ResolveResult] = []
        reason = None
        for entry in found:
            ip = parse_ip(entry["host"])
            why = f"{host} resolves to {entry['host']}" if ip is None else None
            why = why or self._policy.refusal(ip, host)  # type: ignore[arg-type]
            if why is None:
                allowed.append(entry)
            else:
                reason = why
        if not allowed:
            raise EgressRefused(errno.EACCES, reason or f"{host} has no allowed address")
        return allowed

    async def _create_proxy_connection(
        self,
        req: Any,
        traces: Any,
        timeout: Any,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Any:
        host, port = req.url.raw_host, req.port
        if self._check_proxied and not self._policy.host_allowed(host or ""):
            # The proxy resolves the name again; a name that changes its answer between the
            # two lookups is the gap an operator closes with an allowlist on the proxy.
            try:
                found = await super()._resolve_host(host, port)
            except OSError as exc:
                raise EgressRefused(
                    errno.EACCES,
                    f"{host} does not resolve here, so eventfn cannot check it before the "
                    "proxy; allowlist the name (EVENTFN_EGRESS_ALLOW) or declare that the "
                    "proxy enforces egress (EVENTFN_EGRESS_PROXY_CHECKS_NAMES)",
                ) from exc
            self._allowed(host or "", found)
        token = _TO_PROXY.set(True)
        try:
            return await super()._create_proxy_connection(req, traces, timeout)
        finally:
            _TO_PROXY.reset(token)


def _ssl_context(config: EgressConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if config.ca_bundle:
        ctx.load_verify_locations(cafile=config.ca_bundle)
    return ctx


def _wire_body(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _trace_text(data: bytes | None) -> tuple[str | None, bool]:
    if data is None:
        return None, False
    text = data[:_TRACE_BODY_BYTES].decode("utf-8", errors="replace")
    return text, len(text) > TRACE_BODY_CAP


def _refusal_in(exc: BaseException) -> EgressRefused | None:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EgressRefused):
            return e
        todo += [getattr(e, "os_error", None), e.__cause__, e.__context__]
    return None


def _system_error(url: str, exc: BaseException) -> FetchFailed:
    refused = _refusal_in(exc)
    if refused is not None:
        return FetchFailed(
            f"request to {url} failed, reason: {refused.strerror}", "system", "EGRESS_REFUSED"
        )
    parts = urlsplit(url)
    os_error = getattr(exc, "os_error", exc)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(os_error, socket.gaierror):
        code = "EAI_AGAIN" if getattr(os_error, "errno", None) == socket.EAI_AGAIN else "ENOTFOUND"
        return FetchFailed(
            f"request to {url} failed, reason: getaddrinfo {code} {parts.hostname}", "system", code
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchFailed(
            f"request to {url} failed, reason: invalid URL", "system", "ERR_INVALID_URL"
        )
    code = "ECONNRESET"
    reason = str(exc) or type(exc).__name__
    if isinstance(os_error, OSError) and os_error.errno is not None:
        code = errno.errorcode.get(os_error.errno, code)
        reason = f"connect {code} {parts.hostname}:{parts.port or _default_port(parts.scheme)}"
    return FetchFailed(f"request to {url} failed, reason: {reason}", "system", code)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def without_framing(req: FetchRequest) -> FetchRequest:
    """Return the request without the framing headers the function set (see FRAMING_HEADERS)."""
    if not any(name.lower() in FRAMING_HEADERS for name, _ in req.headers):
        return req
    kept = tuple(h for h in req.headers if h[0].lower() not in FRAMING_HEADERS)
    return dataclasses.replace(req, headers=kept)


def with_trace_context(req: FetchRequest, trace_headers: Sequence[tuple[str, str]]) -> FetchRequest:
    """Return the request with the trace headers it lacks; one with a traceparent is kept as is.

    A function that sets traceparent owns the trace context: none of ours (not even a
    tracestate, which belongs to its traceparent) is mixed into it.
    """
    present = {name.lower() for name, _ in req.headers}
    if "traceparent" in present:
        return req
    added = tuple((k, v) for k, v in trace_headers if k.lower() not in present)
    return dataclasses.replace(req, headers=req.headers + added) if added else req


def keeps_credentials(current: str, target: str) -> bool:
    """Tell whether a redirect from `current` to `target` may carry the credential headers.

    node-fetch's rule (isSameProtocol, isDomainOrSubdomain): the same protocol, and the same
    host name or a subdomain of it; the port does not count. node-fetch compares canonical
    hosts, where an IP address never has subdomains; here a host ending in a number (however
    short its spelling: `0.0.1` is 0.0.0.1) or an IPv6 address must match exactly.
    """
    was, now = urlsplit(current), urlsplit(target)
    old, new = was.hostname or "", now.hostname or ""
    if was.scheme != now.scheme or not old:
        return False
    if new == old:
        return True
    last = unicodedata.normalize("NFKC", old.rstrip(".").rpartition(".")[2]).lower()
    number = last.isdigit() or (last[:2] == "0x" and all(c in "0123456789abcdef" for c in last[2:]))
    return not number and ":" not in old and new.endswith("." + old)


def _error(exc: FetchFailed) -> dict[str, Any]:
    return {"message": str(exc), "type": exc.kind, "code": exc.code}


@dataclasses.dataclass(eq=False, slots=True)
class _Share:
    """The connections one owner may hold at once, and how many of its fetches want one."""

    slots: asyncio.Semaphore
    users: int = 0


def _as_latin1(text: str) -> str:
    """Return text aiohttp decoded as UTF-8 (undecodable bytes as lone surrogates) as Node
    reads it: each byte a character (latin-1)."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class HostFetcher:
    """Performs fetch rounds for every function of a worker, on one connection pool.

    Each tenant (a workspace: all its instances and previews together; an owner, a function
    instance, where no tenant is given) has at most a quarter of the pool's connections at
    once: one holding connections (thousands of fetches in a round, a server that never
    answers, in one instance or several) leaves the rest to its neighbours, whose fetches
    would otherwise wait for a connection until their own deadline.
    """

    def __init__(self, config: EgressConfig) -> None:
        self._config = config
        self._policy = EgressPolicy.from_config(config)
        self._session: aiohttp.ClientSession | None = None
        self._proxied = bool(config.http_proxy or config.https_proxy)
        self._share = max(1, config.max_connections // 4)
        self._shares: dict[str, _Share] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = PolicyConnector(
                self._policy,
                check_proxied=not self._config.proxy_checks_names,
                limit=self._config.max_connections,
                ssl=_ssl_context(self._config),
                ttl_dns_cache=10,
            )
            # No cookie jar: cookies must never travel between functions. No timeouts of
            # aiohttp's own: a round ends at the invocation's deadline (`perform_round`), a
            # fetch at its `timeout` (`_one`); its default 300 s timer cost ≈ 5 µs a request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                timeout=aiohttp.ClientTimeout(),
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def perform_round(
        self,
        requests: Sequence[FetchRequest],
        deadline: float,
        keep_bodies: bool,
        budget: ResponseBudget,
        *,
        owner: str = "",
        tenant: str = "",
        trace_headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """Perform requests concurrently; return (results for JS, traces, deadline reached).

        `tenant` (the workspace), else `owner` (the function instance), names whose share of
        the connections they take; `trace_headers` (the event's W3C trace context) go on each
        request that carries no traceparent of the function's own.
        """
        share = f"tenant:{tenant}" if tenant else f"owner:{owner}"
        if not requests:  # every request of the round was refused before it was sent
            return [], [], False
        loop = asyncio.get_running_loop()
        requests = [without_framing(r) for r in requests]
        if trace_headers:
            requests = [with_trace_context(r, trace_headers) for r in requests]
        tasks = [
            loop.create_task(self._one(r, deadline, keep_bodies, budget, share)) for r in requests
        ]
        # One timer for the whole round (the invocation's deadline), not one per request.
        _, late = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.001))
        for task in late:
            task.cancel()
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for req, task in zip(requests, tasks, strict=True):
            if task in late:
                exc = FetchFailed(f"network timeout at: {req.url}", "request-timeout")
                trace = {
                    "method": req.method,
                    "url": req.url,
                    "status": None,
                    "error": str(exc),
                    "duration_ms": 0.0,
                }
                out.append(({"id": req.id, "error": _error(exc)}, trace))
            else:
                out.append(task.result())
        return [o[0] for o in out], [o[1] for o in out], bool(late)

    async def _one(
        self,
        req: FetchRequest,
        deadline: float,
        keep_bodies: bool,
        budget: ResponseBudget,
        share: str,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        started = time.monotonic()
        trace: dict[str, Any] = {
            "method": req.method,
            "url": req.url,
            "start_ns": time.time_ns(),
            "status": None,
            "error": None,
        }
        if keep_bodies:
            trace["request_headers"] = [list(h) for h in req.headers]
            trace["request_body"], _ = _trace_text(req.body)
        try:
            if req.timeout_ms:
                budget_s = min(deadline - started, req.timeout_ms / 1000)
                async with asyncio.timeout(max(budget_s, 0.001)):
                    result, data = await self._shared(req, budget, share)
            else:
                result, data = await self._shared(req, budget, share)
        except FetchFailed as exc:
            result, data = {"id": req.id, "error": _error(exc)}, None
        except TimeoutError:
            exc = FetchFailed(f"network timeout at: {req.url}", "request-timeout")
            result, data = {"id": req.id, "error": _error(exc)}, None
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

    async def _shared(
        self, req: FetchRequest, budget: ResponseBudget, name: str
    ) -> tuple[dict[str, Any], bytes]:
        """Perform a fetch within its tenant's (or owner's) share of the connections."""
        share = self._shares.get(name)
        if share is None:
            share = self._shares[name] = _Share(asyncio.Semaphore(self._share))
        share.users += 1
        try:
            async with share.slots:
                return await self._follow(req, budget)
        finally:
            share.users -= 1
            if not share.users:
                del self._shares[name]

    async def _follow(
        self, req: FetchRequest, budget: ResponseBudget
    ) -> tuple[dict[str, Any], bytes]:
        url, method, body = req.url, req.method, req.body
        headers = list(req.headers)
        limit = self._config.max_response_bytes
        if req.size:
            limit = min(limit, req.size)
        max_hops = min(req.follow, self._config.max_redirects)
        hops = 0
        while True:
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
                    if location is not None:  # bytes not UTF-8 are no surrogates: as Node reads
                        location = _as_latin1(location)
                    if resp.status in REDIRECT_CODES and location is not None:
                        target = urljoin(url, location)
                        if req.redirect == "error":
                            raise FetchFailed(
                                f"uri requested responds with a redirect, redirect mode is set "
                                f"to error: {url}",
                                "no-redirect",
                            )
                        if req.redirect == "follow":
                            if hops >= max_hops:
                                raise FetchFailed(
                                    f"maximum redirect reached at: {url}", "max-redirect"
                                )
                            if urlsplit(target).scheme not in ("http", "https"):
                                raise FetchFailed(
                                    f"redirect to {target} is not http(s)", "system", "EPROTO"
                                )
                            if not keeps_credentials(url, target):
                                headers = [
                                    h for h in headers if h[0].lower() not in CREDENTIAL_HEADERS
                                ]
                            if resp.status == 303 or (
                                resp.status in (301, 302) and method == "POST"
                            ):
                                method, body = "GET", None
                                headers = [h for h in headers if h[0].lower() != "content-type"]
                            url = target
                            hops += 1
                            continue
                    data = await _read_capped(resp, url, limit, self._config, budget)
                    # As Node reads them: each byte a character (latin-1); aiohttp's text of
                    # bytes that are not UTF-8 holds lone surrogates, which no JSON carries.
                    pairs = [
                        [k.decode("latin-1"), v.decode("latin-1")] for k, v in resp.raw_headers
                    ]
                    if location is not None and req.redirect == "manual":
                        pairs = [
                            [k, urljoin(url, v) if k.lower() == "location" else v] for k, v in pairs
                        ]
                    return {
                        "id": req.id,
                        "url": url,
                        "status": resp.status,
                        "statusText": _as_latin1(resp.reason or ""),
                        "headers": pairs,
                        "redirected": hops > 0,
                        "redirects": hops,
                        "body": _wire_body(data),
                    }, data
            except (FetchFailed, TimeoutError):
                raise
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise _system_error(url, exc) from exc


async def _read_capped(
    resp: aiohttp.ClientResponse,
    url: str,
    limit: int,
    config: EgressConfig,
    budget: ResponseBudget,
) -> bytes:
    """Read a body chunk by chunk, counting decompressed bytes against both limits."""

    def too_big() -> FetchFailed:
        if limit < config.max_response_bytes:
            return FetchFailed(f"content size at {url} over limit: {limit}", "max-size")
        return FetchFailed(
            f"response body at {url} is larger than eventfn's limit of "
            f"{config.max_response_bytes // (1024 * 1024)} MB",
            "max-size",
        )

    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if not encoded and resp.content_length is not None and resp.content_length > limit:
        raise too_big()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await resp.content.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            budget.take(len(chunk), url)
            if size > limit:
                raise too_big()
            chunks.append(chunk)
    except BaseException:
        budget.release(size)
        raise
    return b"".join(chunks)
