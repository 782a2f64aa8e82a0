"""A hostile function tries to reach the host's network: every route is refused before a byte
leaves, whatever spelling of an internal address it uses (issue 10, items 1, 3, 7, 8)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime import EgressConfig, OutcomeKind, RuntimePool
from services.runtime.http_fetch import HostFetcher, ResponseBudget
from services.runtime.report import FetchRequest
from tests.runtime.conftest import invoke
from tests.security.conftest import Recorder, config

# Error codes of a fetch that never left: refused by policy, not a URL, a name that is no host.
NOT_SENT = frozenset({"EGRESS_REFUSED", "ERR_INVALID_URL", "ENOTFOUND"})
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def fetch_code(url: str) -> str:
    """A handler that fetches `url` and returns the error it got (or the status)."""
    return f"""async function onTrack() {{
      try {{ const r = await fetch({url!r}); return ['ok', r.status] }}
      catch (e) {{ return [e.name, e.code || null, e.message] }}
    }}"""


async def refused(pool: RuntimePool, code: str) -> list[object]:
    result = await invoke(pool, code)
    assert result.outcomes[0].kind == OutcomeKind.DELIVERED, result.outcomes[0]
    assert result.values is not None
    value = result.values[0]
    assert isinstance(value, list)
    return value


def unicode_spellings(port: int) -> list[str]:
    return [
        f"http://{'127.0.0.1'.translate(FULLWIDTH)}:{port}/a",
        f"http://127。0。0。1:{port}/b",
        f"http://127．0．0．1:{port}/c",
        f"http://①②⑦.0.0.1:{port}/d",
        f"http://127.0.0.1.:{port}/e",
        f"http://0x7f.1:{port}/f",
        f"http://0177.0.0.1:{port}/g",
        f"http://2130706433:{port}/h",
        f"http://LOCALHOST:{port}/i",
        f"http://[::ffff:7f00:1]:{port}/j",
        f"http://[::ffff:127.0.0.1]:{port}/k",
        f"http://[64:ff9b::7f00:1]:{port}/l",
        f"http://[::7f00:1]:{port}/m",
        f"http://[::1]:{port}/n",
    ]


async def test_unicode_and_legacy_ip_spellings_are_refused(
    strict_pool: RuntimePool, recorder: Recorder
) -> None:
    before = len(recorder.seen)
    for url in unicode_spellings(recorder.port):
        value = await refused(strict_pool, fetch_code(url))
        assert value[0] == "FetchError", (url, value)
        assert value[1] in NOT_SENT, (url, value)
    assert len(recorder.seen) == before


async def test_a_request_url_rewritten_after_construction_is_not_what_is_sent(
    strict_pool: RuntimePool, recorder: Recorder
) -> None:
    target = f"http://{'127.0.0.1'.translate(FULLWIDTH)}:{recorder.port}/health"
    code = f"""async function onTrack() {{
      const r = new Request('http://example.invalid/');
      r.url = {target!r};
      const forged = Object.create(Request.prototype);
      Object.defineProperty(forged, 'url', {{value: {target!r}}});
      Object.assign(forged, {{method: 'GET', redirect: 'follow', follow: 20}});
      const out = [r.url];
      for (const req of [r, forged]) {{
        try {{ await fetch(req); out.push('sent') }}
        catch (e) {{ out.push(e.code || e.name) }}
      }}
      return out
    }}"""
    before = len(recorder.seen)
    value = await refused(strict_pool, code)
    assert value[0] == "http://example.invalid/"  # Request.url is read-only, as in node-fetch
    assert value[1] == "ENOTFOUND"  # the original URL was sent (and did not resolve)
    assert value[2] in NOT_SENT  # a forged Request is normalised again and checked
    assert len(recorder.seen) == before


@pytest_asyncio.fixture
async def localhost_allowed() -> AsyncIterator[RuntimePool]:
    """A pool whose operator allowlisted the name `localhost` (not its address)."""
    async with RuntimePool(config(workers=1, allow=("localhost",))) as pool:
        yield pool


async def test_redirects_to_internal_spellings_are_refused(
    localhost_allowed: RuntimePool, recorder: Recorder
) -> None:
    for target in unicode_spellings(recorder.port)[:6]:
        before = len(recorder.seen)
        start = f"http://localhost:{recorder.port}/redirect?to={target}"
        value = await refused(localhost_allowed, fetch_code(start))
        assert value[0] == "FetchError" and value[1] in NOT_SENT, (target, value)
        # The allowlisted name got the first request; the redirect target got nothing.
        assert len(recorder.seen) == before + 1
        assert recorder.seen[-1][1].startswith("/redirect")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://[fec0::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[64:ff9b:1::a00:1]/",
    ],
)
async def test_internal_addresses_are_refused_at_once(strict_pool: RuntimePool, url: str) -> None:
    started = time.monotonic()
    value = await refused(strict_pool, fetch_code(url))
    assert value[:2] == ["FetchError", "EGRESS_REFUSED"]
    assert time.monotonic() - started < 2  # refused, not timed out


@pytest.mark.parametrize("url", ["file:///etc/passwd", "data:text/plain,x", "ftp://example/"])
async def test_non_http_schemes_are_refused(strict_pool: RuntimePool, url: str) -> None:
    value = await refused(strict_pool, fetch_code(url))
    assert value[0] == "TypeError" and "HTTP(S)" in str(value[2])


async def test_unresolvable_names_fail_as_enotfound(strict_pool: RuntimePool) -> None:
    value = await refused(strict_pool, fetch_code("http://no-such-host.invalid/"))
    assert value[:2] == ["FetchError", "ENOTFOUND"]
    assert "getaddrinfo ENOTFOUND no-such-host.invalid" in str(value[2])


async def test_gzip_bomb_is_cut_at_the_limit_after_decompression(
    one_worker: RuntimePool, recorder: Recorder
) -> None:
    code = f"""async function onTrack() {{
      try {{ const r = await fetch('{recorder.url}/bomb'); return [(await r.text()).length] }}
      catch (e) {{ return [e.name, e.type, e.message] }}
    }}"""
    started = time.monotonic()
    result = await invoke(one_worker, code, timeout_s=20)
    assert result.values is not None
    name, kind, message = result.values[0]  # type: ignore[misc]
    assert (name, kind) == ("FetchError", "max-size")
    assert "10 MB" in message
    assert time.monotonic() - started < 10  # cut while streaming, not read to the end
    worker = one_worker._workers[0]
    assert worker is not None and worker.rss() < 1024 * 1024 * 1024


async def test_responses_of_one_invocation_count_against_its_memory(
    one_worker: RuntimePool, recorder: Recorder
) -> None:
    # Twenty 9 MB responses held at once: each is under the 10 MB cap; together they would
    # pass the invocation's 128 MB memory limit once copied in, so the fetches past a
    # quarter of it fail, and the invocation lives.
    code = f"""async function onTrack() {{
      const one = () => fetch('{recorder.url}/blob?mb=9').then(
        (r) => r.text().then((t) => t.length), (e) => e.message);
      return Promise.all(Array.from({{length: 20}}, one))
    }}"""
    result = await invoke(one_worker, code, timeout_s=30)
    outcomes = result.values[0] if result.values else None
    assert isinstance(outcomes, list), result.outcomes
    read = [o for o in outcomes if o == 9 * 1024 * 1024]
    cut = [o for o in outcomes if isinstance(o, str) and "memory limit of 128 MB" in o]
    assert len(read) + len(cut) == 20 and 1 <= len(read) <= 3


class _Listener:
    """A TCP listener on 127.0.0.1: any connection that reaches it waits in its backlog."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def reached(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


@pytest.fixture(scope="module")
def listener() -> Iterator[_Listener]:
    lst = _Listener()
    yield lst
    lst.sock.close()


DIGITS = [
    "0123456789",
    "０１２３４５６７８９",  # fullwidth
    "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",  # mathematical bold
    "⓪①②③④⑤⑥⑦⑧⑨",  # circled
]
DOTS = [".", "。", "．", "｡"]


@st.composite
def loopback_spellings(draw: st.DrawFn) -> str:
    """Spell 127.0.0.1 the ways URL parsers, IDNA and resolvers turn back into it."""
    form = draw(st.sampled_from(["dotted", "short", "integer", "hex", "octal", "ipv6"]))
    if form == "ipv6":
        host = draw(
            st.sampled_from(
                [
                    "::ffff:127.0.0.1",
                    "::ffff:7f00:1",
                    "0:0:0:0:0:ffff:7f00:1",
                    "::ffff:0:7f00:1",
                    "64:ff9b::7f00:1",
                    "64:ff9b::127.0.0.1",
                    "::127.0.0.1",
                    "2002:7f00:1::1",
                    "::1",
                ]
            )
        )
        host = "".join(c.upper() if draw(st.booleans()) else c for c in host)
        return f"[{host}]"
    parts = {
        "dotted": ["127", "0", "0", "1"],
        "short": ["127", "1"],
        "integer": ["2130706433"],
        "hex": ["0x7f", "0x0", "0x0", "0x1"],
        "octal": ["0177", "0", "0", "01"],
    }[form]
    table = draw(st.sampled_from(DIGITS))
    spelled = []
    for part in parts:
        chars = []
        for c in part:
            if c.isdigit() and draw(st.booleans()):
                chars.append(table[int(c)])
            elif c == "x" and draw(st.booleans()):
                chars.append("X")
            elif c.isdigit() and draw(st.integers(0, 9)) == 0:
                chars.append(f"%{ord(c):02X}")
            else:
                chars.append(c)
        spelled.append("".join(chars))
    host = "".join(p + draw(st.sampled_from(DOTS)) for p in spelled[:-1]) + spelled[-1]
    if draw(st.booleans()):
        host += draw(st.sampled_from(DOTS))
    return host


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host=loopback_spellings())
def test_no_spelling_of_loopback_reaches_it(listener: _Listener, host: str) -> None:
    url = f"http://{host}:{listener.port}/"
    request = FetchRequest(1, url, "GET", (), None, "follow", 20, 0, 0)

    async def attempt() -> list[dict[str, object]]:
        fetcher = HostFetcher(EgressConfig())
        try:
            results, _, _ = await fetcher.perform_round(
                [request], time.monotonic() + 5, False, ResponseBudget(1 << 20)
            )
        finally:
            await fetcher.close()
        return results

    results = asyncio.run(attempt())
    assert "error" in results[0], (host, results)
    assert not listener.reached(), f"{host!r} reached 127.0.0.1"
