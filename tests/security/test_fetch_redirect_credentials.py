"""A function fetches with credentials and the server redirects it to another host: the
Authorization, WWW-Authenticate, Cookie and Cookie2 headers stay behind, as node-fetch ≥ 2.6.7
leaves them (CVE-2022-0235), and so does Proxy-Authorization. A redirect on the same host or to
one of its subdomains keeps them; one to another host, to a parent domain or to another
protocol drops them, for good."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import web

from services.runtime import EgressConfig, RuntimePool
from services.runtime.http_fetch import HostFetcher, ResponseBudget, keeps_credentials
from services.runtime.report import FetchRequest
from tests.runtime.conftest import invoke, value_of
from tests.runtime.fake_apis import FakeApis, InterceptingProxy, fake_apis
from tests.security.conftest import config

KEY = "sk_live_redirect_probe"
CREDENTIALS = {
    "authorization": f"Bearer {KEY}",
    "cookie": f"sid={KEY}",
    "cookie2": f"$Version=1; sid={KEY}",
    "www-authenticate": f"Basic {KEY}",
    "proxy-authorization": f"Basic {KEY}",
}
# Spelled as a function would: any case; an ordinary header follows every redirect.
SENT = (
    ("Authorization", CREDENTIALS["authorization"]),
    ("COOKIE", CREDENTIALS["cookie"]),
    ("Cookie2", CREDENTIALS["cookie2"]),
    ("WWW-Authenticate", CREDENTIALS["www-authenticate"]),
    ("proxy-Authorization", CREDENTIALS["proxy-authorization"]),
    ("X-Request-Id", "probe-1"),
)


@dataclass
class Host:
    """A loopback HTTP server on one address that records each request's path and headers."""

    address: str
    port: int = 0
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Return the base URL by IP literal."""
        return f"http://{self.address}:{self.port}"

    def at(self, path: str) -> dict[str, str]:
        """Return the headers of the last request for `path`."""
        return next(headers for got, headers in reversed(self.seen) if got == path)


async def _serve(host: Host) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        host.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        if "to" in request.query:
            raise web.HTTPFound(request.query["to"])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.address, 0).start()
    host.port = runner.addresses[0][1]
    return runner


@pytest_asyncio.fixture(scope="module")
async def hosts() -> AsyncIterator[tuple[Host, Host]]:
    """Run one recording server on 127.0.0.1 and another on 127.0.0.2."""
    first, second = Host("127.0.0.1"), Host("127.0.0.2")
    runners = [await _serve(first), await _serve(second)]
    yield first, second
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def loopback_pool() -> AsyncIterator[RuntimePool]:
    """A pool whose operator allowlisted both loopback hosts."""
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32", "127.0.0.2/32"))) as pool:
        yield pool


def _fetch_code(url: str) -> str:
    headers = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in SENT) + "}"
    return f"""async function onTrack() {{
      const r = await fetch({url!r}, {{headers: {headers}}});
      return [r.status, r.redirected]
    }}"""


def _credentials(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in CREDENTIALS}


async def test_a_redirect_to_another_host_drops_the_credentials(
    loopback_pool: RuntimePool, hosts: tuple[Host, Host]
) -> None:
    first, second = hosts
    start = f"{first.url}/redirect?to={second.url}/landing"
    assert value_of(await invoke(loopback_pool, _fetch_code(start))) == [200, True]
    assert _credentials(first.at("/redirect")) == CREDENTIALS
    landed = second.at("/landing")
    assert _credentials(landed) == {}
    assert landed["x-request-id"] == "probe-1"


async def test_credentials_dropped_once_stay_dropped_back_on_the_first_host(
    loopback_pool: RuntimePool, hosts: tuple[Host, Host]
) -> None:
    first, second = hosts
    start = f"{first.url}/redirect?to={second.url}/bounce?to={first.url}/back"
    assert value_of(await invoke(loopback_pool, _fetch_code(start))) == [200, True]
    assert _credentials(second.at("/bounce")) == {}
    assert _credentials(first.at("/back")) == {}


async def test_a_redirect_on_the_same_host_keeps_the_credentials(
    loopback_pool: RuntimePool, hosts: tuple[Host, Host]
) -> None:
    first, _ = hosts
    start = f"{first.url}/redirect?to=/landing"
    assert value_of(await invoke(loopback_pool, _fetch_code(start))) == [200, True]
    assert _credentials(first.at("/landing")) == CREDENTIALS


@pytest_asyncio.fixture(scope="module")
async def named_hosts() -> AsyncIterator[tuple[FakeApis, InterceptingProxy]]:
    """Run the fake APIs behind the TLS-intercepting proxy: any host name, http or https."""
    async with fake_apis() as servers:
        yield servers


@pytest.mark.parametrize(
    ("start", "target", "kept"),
    [
        ("https://example.com/r", "https://api.example.com/landing", True),
        ("https://api.example.com/r", "https://example.com/landing", False),
        ("https://example.com/r", "https://badexample.com/landing", False),
        ("https://example.com/r", "http://example.com/landing", False),
        ("http://example.com/r", "https://example.com/landing", False),
    ],
)
async def test_named_hosts_keep_credentials_only_on_the_host_or_its_subdomains(
    named_hosts: tuple[FakeApis, InterceptingProxy], start: str, target: str, kept: bool
) -> None:
    apis, proxy = named_hosts
    apis.received.clear()
    start_host = start.split("/")[2]
    apis.on(
        start_host, "GET", "/r", lambda _r: web.Response(status=302, headers={"Location": target})
    )
    apis.reply(target.split("/")[2], "GET", "/landing", {"ok": True})
    fetcher = HostFetcher(
        EgressConfig(
            https_proxy=proxy.url,
            http_proxy=proxy.url,
            ca_bundle=proxy.ca.bundle,
            proxy_checks_names=True,
        )
    )
    request = FetchRequest(1, start, "GET", SENT, None, "follow", 20, 0, 0)
    try:
        results, _, _ = await fetcher.perform_round(
            [request], time.monotonic() + 10, False, ResponseBudget(1 << 20)
        )
    finally:
        await fetcher.close()
    assert results[0].get("status") == 200, results[0]
    first, landed = apis.received
    assert (first.path, landed.path) == ("/r", "/landing")
    assert _credentials(first.headers) == CREDENTIALS
    assert _credentials(landed.headers) == (CREDENTIALS if kept else {})
    assert landed.headers["x-request-id"] == "probe-1"


@pytest.mark.parametrize(
    ("current", "target", "kept"),
    [
        ("http://example.com/a", "http://example.com/b", True),
        ("http://Example.COM/a", "http://example.com:8080/b", True),
        ("https://example.com/", "https://api.eu.example.com/", True),
        ("https://api.example.com/", "https://example.com/", False),
        ("https://example.com/", "https://badexample.com/", False),
        ("https://example.com/", "https://example.com.evil.test/", False),
        ("https://example.com/", "http://example.com/", False),
        ("http://example.com/", "https://example.com/", False),
        ("http://127.0.0.1:1/", "http://127.0.0.1:2/", True),
        ("http://127.0.0.1/", "http://127.0.0.2/", False),
        ("http://[::1]:1/", "http://[::1]:2/", True),
        # Short IPv4 spellings are no domains: 10.0.0.1 is not a "subdomain" of 0.0.1.
        ("http://0.0.1/", "http://10.0.0.1/", False),
        ("http://1.1/", "http://0x1.1.1/", False),
    ],
)
def test_the_rule_is_node_fetchs(current: str, target: str, kept: bool) -> None:
    assert keeps_credentials(current, target) is kept
